//! Client behaviour of the external-resizer, for tests that race it.

use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::requests;

/// Calls ControllerExpandVolume like the external-resizer: retries ABORTED
/// ("operation pending") with a short pause until another answer comes, for
/// at most a minute. Returns every code seen, in order; an OK answer must
/// hold at least `bytes`.
pub async fn expand_like_the_resizer(mut client: ControllerClient<Channel>, id: String, bytes: u64) -> Vec<Code> {
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0u64;
    while Instant::now() < until {
        match client.controller_expand_volume(requests::controller_expand(&id, bytes as i64, None)).await {
            Ok(answer) => {
                let capacity = answer.into_inner().capacity_bytes;
                assert!(capacity >= 0 && capacity as u64 >= bytes, "expand {id} to {bytes} answered OK with {capacity} bytes");
                seen.push(Code::Ok);
                return seen;
            }
            Err(status) => {
                seen.push(status.code());
                if status.code() != Code::Aborted {
                    eprintln!("expand {id} to {bytes}: {status:?}");
                    return seen;
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(3 + attempt % 11)).await;
            }
        }
    }
    seen
}
