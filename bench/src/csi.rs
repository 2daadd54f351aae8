//! The CSI calls the bench times, as the sidecars make them: one at a time,
//! many volumes at once, and many calls for one volume at once (retried on
//! ABORTED, as the external-resizer does).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::*;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::report::Samples;
use crate::step::{BenchResult, at};
use swell_e2e::requests;
use swell_storage::units::MIB;

/// How long a retried call may keep being refused before the bench gives up.
const RETRY_PATIENCE: Duration = Duration::from_secs(60);

/// A controller client and the StorageClass parameters of its volumes.
#[derive(Clone)]
pub(crate) struct Csi {
    /// The client.
    pub client: ControllerClient<Channel>,
    /// StorageClass parameters of every create.
    pub parameters: HashMap<String, String>,
    /// Secrets sent with every create, expand and delete (as the sidecars
    /// send a StorageClass's provisioner, resizer and deleter secrets).
    pub secrets: HashMap<String, String>,
}

impl Csi {
    /// A client on `channel` creating with `parameters`.
    pub(crate) fn new(channel: Channel, parameters: &[(&str, &str)]) -> Self {
        let pairs = |list: &[(&str, &str)]| list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Csi { client: ControllerClient::new(channel), parameters: pairs(parameters), secrets: HashMap::new() }
    }

    /// The same client sending `secrets` with every create, expand and delete.
    #[cfg_attr(not(feature = "rbd"), allow(dead_code))]
    pub(crate) fn with_secrets(mut self, secrets: HashMap<String, String>) -> Self {
        self.secrets = secrets;
        self
    }

    /// CreateVolume of a raw block volume; the volume's id. Block, because
    /// Swell raises a mount volume to its filesystem's minimum (about 300
    /// MiB for xfs): a 64 MiB xfs volume grown to 128 MiB would measure no
    /// resize, and 64 of them would not fit the test cluster's pool.
    pub(crate) async fn create(&mut self, name: &str, bytes: u64) -> Result<String, Status> {
        let mut request = requests::create_volume(name, bytes as i64, requests::block_capability());
        request.parameters = self.parameters.clone();
        request.secrets = self.secrets.clone();
        let volume = self.client.create_volume(request).await?.into_inner().volume.ok_or_else(|| Status::internal("no volume in the answer"))?;
        Ok(volume.volume_id)
    }

    /// ControllerExpandVolume; the size answered.
    pub(crate) async fn expand(&mut self, id: &str, bytes: u64) -> Result<u64, Status> {
        let request = ControllerExpandVolumeRequest { secrets: self.secrets.clone(), ..requests::controller_expand(id, bytes as i64, None) };
        let answer = self.client.controller_expand_volume(request).await?.into_inner();
        Ok(answer.capacity_bytes as u64)
    }

    /// ControllerExpandVolume retried while ABORTED (another call holds the
    /// volume), as the external-resizer retries; the answer and how many
    /// times it was refused first.
    pub(crate) async fn expand_retrying(&mut self, id: &str, bytes: u64) -> Result<(u64, usize), Status> {
        let started = Instant::now();
        let mut refused = 0;
        loop {
            match self.expand(id, bytes).await {
                Err(status) if status.code() == Code::Aborted && started.elapsed() < RETRY_PATIENCE => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return other.map(|size| (size, refused)),
            }
        }
    }

    /// DeleteVolume.
    pub(crate) async fn delete(&mut self, id: &str) -> Result<(), Status> {
        self.client.delete_volume(DeleteVolumeRequest { volume_id: id.to_owned(), secrets: self.secrets.clone() }).await.map(drop)
    }

    /// GetCapacity of the volumes' StorageClass.
    pub(crate) async fn capacity(&mut self) -> Result<i64, Status> {
        let request = GetCapacityRequest { parameters: self.parameters.clone(), ..Default::default() };
        Ok(self.client.get_capacity(request).await?.into_inner().available_capacity)
    }

    /// One ListVolumes page: its entries and the next token.
    pub(crate) async fn list_page(&mut self, token: &str, max: i32) -> Result<(usize, String), Status> {
        let answer = self.client.list_volumes(ListVolumesRequest { max_entries: max, starting_token: token.to_owned() }).await?.into_inner();
        Ok((answer.entries.len(), answer.next_token))
    }
}

/// One volume's life through the socket: CreateVolume of 64 MiB named
/// `name`, ControllerExpandVolume to 128 MiB, DeleteVolume; how long each
/// took, in that order, added to `samples`.
pub(crate) async fn life(csi: &mut Csi, name: &str, samples: &mut [Samples; 3]) -> BenchResult<()> {
    let (took, id) = timed(csi.create(name, 64 * MIB)).await;
    let id = id.map_err(at(format!("create {name}")))?;
    samples[0].push(took);
    let (took, grown) = timed(csi.expand(&id, 128 * MIB)).await;
    grown.map_err(at(format!("expand {id}")))?;
    samples[1].push(took);
    let (took, deleted) = timed(csi.delete(&id)).await;
    deleted.map_err(at(format!("delete {id}")))?;
    samples[2].push(took);
    Ok(())
}

/// Three empty sets of samples (create, expand, delete).
pub(crate) fn three() -> [Samples; 3] {
    std::array::from_fn(|_| Samples::default())
}

/// Runs `call` and returns how long it took, with its outcome.
pub(crate) async fn timed<T>(call: impl std::future::Future<Output = T>) -> (Duration, T) {
    let started = Instant::now();
    let outcome = call.await;
    (started.elapsed(), outcome)
}

/// Creates `names` with `concurrency` calls in flight; their ids, in order.
pub(crate) async fn create_many(csi: &Csi, names: Vec<String>, bytes: u64, concurrency: usize) -> BenchResult<Vec<String>> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let tasks: Vec<_> = names
        .into_iter()
        .map(|name| {
            let (mut csi, permits) = (csi.clone(), Arc::clone(&permits));
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let started = Instant::now();
                loop {
                    match csi.create(&name, bytes).await {
                        Err(status) if status.code() == Code::Aborted && started.elapsed() < RETRY_PATIENCE => {
                            tokio::time::sleep(Duration::from_millis(5)).await
                        }
                        other => return other.map_err(at(format!("create {name}"))),
                    }
                }
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(tasks.len());
    for task in tasks {
        ids.push(task.await.map_err(at("create task"))??);
    }
    Ok(ids)
}

/// Expands each of `ids` by one step of `step` bytes beyond `sizes[i]`, all
/// at once; the wall time of the whole batch. `sizes` is updated.
pub(crate) async fn expand_all_at_once(csi: &Csi, ids: &[String], sizes: &mut [u64], step: u64) -> BenchResult<Duration> {
    let started = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .zip(sizes.iter())
        .map(|(id, size)| {
            let (mut csi, id, target) = (csi.clone(), id.clone(), size + step);
            tokio::spawn(async move { csi.expand_retrying(&id, target).await.map_err(at(format!("expand {id}"))) })
        })
        .collect();
    for (task, size) in tasks.into_iter().zip(sizes.iter_mut()) {
        *size = task.await.map_err(at("expand task"))??.0;
    }
    Ok(started.elapsed())
}

/// What a storm of calls for one volume did.
#[derive(Debug, Default)]
pub(crate) struct Storm {
    /// Each call's time until it was answered OK, retries included.
    pub latencies: Samples,
    /// ABORTED answers before the OKs.
    pub refusals: usize,
    /// The distinct sizes asked for.
    pub distinct_sizes: usize,
    /// The largest size answered.
    pub final_size: u64,
}

/// `calls` concurrent ControllerExpandVolume calls for `id`, asking for
/// `distinct` different sizes above `from` (one MiB apart), each retried
/// until OK.
pub(crate) async fn storm(csi: &Csi, id: &str, from: u64, calls: usize, distinct: usize) -> BenchResult<Storm> {
    let tasks: Vec<_> = (0..calls)
        .map(|i| {
            let (mut csi, id, target) = (csi.clone(), id.to_owned(), from + MIB * (1 + (i % distinct) as u64));
            tokio::spawn(async move { timed(csi.expand_retrying(&id, target)).await })
        })
        .collect();
    let mut storm = Storm { distinct_sizes: distinct, ..Storm::default() };
    for task in tasks {
        let (took, answer) = task.await.map_err(at("storm task"))?;
        let (size, refused) = answer.map_err(at(format!("storm expand of {id}")))?;
        storm.latencies.push(took);
        storm.refusals += refused;
        storm.final_size = storm.final_size.max(size);
    }
    Ok(storm)
}

/// What a burst of calls made all at once did.
#[cfg_attr(not(feature = "rbd"), allow(dead_code))]
#[derive(Debug, Default)]
pub(crate) struct Burst<T> {
    /// From the first call sent until the last answered.
    pub wall: Duration,
    /// Each call's time until it was answered OK.
    pub latencies: Samples,
    /// Each call's answer, in the order of the inputs (an error as its text).
    pub answers: Vec<Result<T, String>>,
}

#[cfg_attr(not(feature = "rbd"), allow(dead_code))]
impl<T> Burst<T> {
    /// Calls answered OK per second of the burst's wall time.
    pub(crate) fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The errors, in the order of the inputs.
    pub(crate) fn errors(&self) -> impl Iterator<Item = &String> {
        self.answers.iter().filter_map(|a| a.as_ref().err())
    }
}

/// `call(csi, input)` for every input at once (one task each, no retry: an
/// error is an answer, counted, not hidden).
#[cfg_attr(not(feature = "rbd"), allow(dead_code))]
pub(crate) async fn burst<I, T, F, Fut>(csi: &Csi, inputs: Vec<I>, call: F) -> BenchResult<Burst<T>>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(Csi, I) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = inputs.into_iter().map(|input| tokio::spawn(timed(call(csi.clone(), input)))).collect();
    let mut burst = Burst { wall: Duration::ZERO, latencies: Samples::default(), answers: Vec::with_capacity(tasks.len()) };
    for task in tasks {
        let (took, answer) = task.await.map_err(at("burst task"))?;
        if answer.is_ok() {
            burst.latencies.push(took);
        }
        burst.answers.push(answer);
    }
    burst.wall = started.elapsed();
    Ok(burst)
}
