//! What a run measures ([`Plan`]) and on what ([`Rig`]: one backend's
//! controller as a process and in-process), and how a failed step is told.

use std::path::{Path, PathBuf};
use std::time::Duration;

use swell_controller::AutoGrowConfig;

use crate::step::{BenchResult, at};
use crate::{csi, process};

/// How much to measure.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Samples per figure.
    pub runs: usize,
    /// Volume counts of the scale figures, ascending.
    pub scale: Vec<usize>,
    /// Where the binaries under measurement are (`swell-controller`, `swell-node`).
    pub bin_dir: PathBuf,
    /// The controller binary to measure (another build for a "before" column).
    pub controller_bin: PathBuf,
    /// Names the controller binary in the tables.
    pub label: String,
    /// Directory for scratch state (sparse files, sockets).
    pub scratch: PathBuf,
    /// What the auto-grow section measures.
    pub auto_grow: AutoGrowPlan,
}

impl Plan {
    /// The `swell-node` binary.
    pub(crate) fn node_bin(&self) -> PathBuf {
        self.bin_dir.join("swell-node")
    }
}

/// One backend under measurement: how its controller process is started
/// (and restarted over the same state), its StorageClass parameters, and
/// the same wiring in-process for what only the process's insides show
/// (a reconciler pass and its backend calls).
#[derive(Debug, Clone)]
pub(crate) struct Rig {
    /// `local` or `rbd`.
    pub name: &'static str,
    /// The controller process's arguments.
    pub controller: process::ControllerArgs,
    /// StorageClass parameters of the volumes it creates.
    pub parameters: Vec<(String, String)>,
    /// The RBD cluster of the in-process controller (its default backend), if any.
    pub rbd: Option<swell_rbd::RbdConfig>,
    /// Bytes the local backend may promise (default: its file system's size).
    pub local_capacity: Option<u64>,
}

impl Rig {
    /// A client creating with this rig's parameters.
    pub(crate) fn csi(&self, channel: tonic::transport::Channel) -> csi::Csi {
        let parameters: Vec<(&str, &str)> = self.parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        csi::Csi::new(channel, &parameters)
    }

    /// The same rig with room for 10,000 thin volumes: sparse files and
    /// thin images hold almost nothing, but Swell promises their full size,
    /// which a test machine's disk or a test cluster's pool cannot.
    pub(crate) fn roomy(mut self) -> Self {
        const PIB: u64 = 1 << 50;
        self.local_capacity = Some(PIB);
        self.controller.extra.push(format!("--local-capacity-bytes={PIB}"));
        if let Some(rbd) = &mut self.rbd {
            rbd.overprovision_ratio = 1000.0;
            self.controller.extra.push("--rbd-overprovision-ratio=1000".into());
        }
        self
    }

    /// Starts the controller process.
    pub(crate) async fn start(&self) -> BenchResult<process::Served> {
        process::Served::controller(&self.controller).await
    }

    /// The in-process controller over the process's state (run it only
    /// while the process is stopped).
    pub(crate) fn in_process(&self) -> BenchResult<swell_controller::Controller> {
        let local = swell_local::LocalConfig {
            capacity_bytes: self.local_capacity,
            ..swell_local::LocalConfig::new(&self.controller.local_state_dir, self.controller.root.join("controller"))
        };
        let backends = match &self.rbd {
            Some(rbd) => swell_backends::BackendConfig { rbd: Some(rbd.clone()), default_backend: "rbd".into(), ..swell_backends::BackendConfig::local(local) },
            None => swell_backends::BackendConfig::local(local),
        };
        let config = swell_controller::ControllerConfig {
            driver_name: swell_e2e::harness::DRIVER_NAME.into(),
            backends,
            reconciler: swell_controller::ReconcilerConfig::default(),
        };
        swell_controller::build(&config).map_err(at("build the in-process controller"))
    }
}

/// How often the node and the controller look: the shipped defaults, or
/// a quicker pace for `--short`, which judges nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// The node's `--usage-report-interval-ms`.
    pub usage_report: Duration,
    /// The node's `--grow-on-backend-change-ms`.
    pub grow_on_change: Duration,
    /// The controller's `--auto-grow-interval-ms`.
    pub grower: Duration,
}

impl Pace {
    /// The flags' defaults.
    pub(crate) fn shipped() -> Pace {
        Pace { usage_report: Duration::from_secs(30), grow_on_change: Duration::from_secs(2), grower: AutoGrowConfig::default().interval }
    }

    /// A quarter of a second each, a reading every second, for `--short`.
    pub(crate) fn quick() -> Pace {
        Pace { usage_report: Duration::from_secs(1), grow_on_change: Duration::from_millis(250), grower: Duration::from_millis(250) }
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "node --usage-report-interval-ms={} --grow-on-backend-change-ms={}, controller --auto-grow-interval-ms={}",
            self.usage_report.as_millis(),
            self.grow_on_change.as_millis(),
            self.grower.as_millis()
        )
    }
}

/// What the auto-grow section measures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AutoGrowPlan {
    /// Volumes staged on the node whose reporting is measured.
    pub volumes: usize,
    /// How long the node's CPU is measured, with reporting and without.
    pub window: Duration,
    /// How often the node and the controller look.
    pub pace: Pace,
}

/// `dir`, emptied.
pub(crate) fn fresh(dir: &Path) -> BenchResult<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(at(format!("create {}", dir.display())))?;
    Ok(dir.to_owned())
}

impl Rig {
    /// A local rig over a fresh state directory under `dir`.
    pub(crate) fn local(plan: &Plan, dir: &Path, metrics_port: u16) -> Rig {
        Rig {
            name: "local",
            controller: process::ControllerArgs {
                binary: plan.controller_bin.clone(),
                root: dir.to_owned(),
                local_state_dir: dir.join("local"),
                extra: Vec::new(),
                metrics_port,
            },
            parameters: Vec::new(),
            rbd: None,
            local_capacity: None,
        }
    }
}
