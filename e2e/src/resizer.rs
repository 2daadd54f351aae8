//! Client behaviour of the external-resizer, for tests that race it.

use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::requests;

/// How one resizer-like call went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resized {
    /// Every code seen, in order; the last is the final answer.
    pub codes: Vec<Code>,
    /// The size answered with OK.
    pub size: Option<u64>,
}

/// Calls ControllerExpandVolume like the external-resizer: retries ABORTED
/// ("operation pending") with a short pause until another answer comes, for
/// at most a minute. An OK answer must hold at least `bytes`.
pub async fn expand_like_the_resizer(mut client: ControllerClient<Channel>, id: String, bytes: u64) -> Resized {
    let mut resized = Resized { codes: Vec::new(), size: None };
    let until = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0u64;
    while Instant::now() < until {
        match client.controller_expand_volume(requests::controller_expand(&id, bytes as i64, None)).await {
            Ok(answer) => {
                let capacity = answer.into_inner().capacity_bytes;
                assert!(capacity >= 0 && capacity as u64 >= bytes, "expand {id} to {bytes} answered OK with {capacity} bytes");
                resized.codes.push(Code::Ok);
                resized.size = Some(capacity as u64);
                return resized;
            }
            Err(status) => {
                resized.codes.push(status.code());
                if status.code() != Code::Aborted {
                    return resized;
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(3 + attempt % 11)).await;
            }
        }
    }
    resized
}
