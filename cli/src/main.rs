//! `swell`, the operator's view of Swell, for the person asking "why is my
//! resize slow?": every volume's requested, desired and current size, where
//! its expansion stands, for how long and why, read from the same state the
//! controller uses and, where a configuration is found, from Kubernetes.
//!
//! - [`view`]: one volume's state, decided from what was read (pure).
//! - [`error`]: why `swell` could not show what was asked.
//! - [`gather`]: the backends and expansion records, as the controller reads them.
//! - [`kubernetes`]: PersistentVolumes and their claims, through kube's client.
//! - [`render`]: tables and sizes.

mod error;
mod gather;
mod kubernetes;
mod render;
mod view;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use csi_endpoint::identity::DEFAULT_DRIVER_NAME;
use indicatif::{ProgressBar, ProgressDrawTarget};
use serde_json::json;
use swell_backends::BackendArgs;
use swell_storage::VolumeId;
use swell_storage::expansion::{DEFAULT_STUCK_AFTER_SECS, now_unix};

use crate::error::CliError;
use crate::gather::Reader;
use crate::kubernetes::Answer;
use crate::view::{Claim, VolumeView};

/// Swell's volumes as the controller sees them: sizes requested, desired and
/// current, and where each expansion stands. Run it where the controller runs
/// (`kubectl -n swell-system exec deploy/swell-controller -c swell-controller
/// -- swell volumes`), or anywhere with the same flags.
#[derive(Debug, Parser)]
#[command(name = "swell", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every volume, one row each.
    Volumes(Common),
    /// One volume in detail, with what kubelet reported after growing its filesystem.
    Volume {
        /// The CSI volume id (the PersistentVolume's volumeHandle).
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Ask Kubernetes for the claims (auto: when a kubeconfig or a service
    /// account is found).
    #[arg(long, value_enum, default_value_t = Kubernetes::Auto)]
    kubernetes: Kubernetes,
    /// Seconds Kubernetes may take to answer.
    #[arg(long, default_value_t = 10)]
    kube_timeout_secs: u64,
    /// The CSI driver name whose PersistentVolumes are Swell's.
    #[arg(long, env = "SWELL_DRIVER_NAME", default_value = DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Seconds a volume may grow before it shows as stuck (as the controller's flag).
    #[arg(long, env = "SWELL_STUCK_AFTER_SECS", default_value_t = DEFAULT_STUCK_AFTER_SECS)]
    stuck_after_secs: u64,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kubernetes {
    Auto,
    Never,
}

impl Common {
    fn stuck_after(&self) -> Duration {
        Duration::from_secs(self.stuck_after_secs)
    }

    /// The claims by volume handle, or why there are none.
    async fn claims(&self, progress: &ProgressBar) -> (Option<std::collections::HashMap<String, Claim>>, String) {
        if self.kubernetes == Kubernetes::Never {
            return (None, "not asked (--kubernetes never)".into());
        }
        progress.set_message("asking Kubernetes for PersistentVolumes and claims");
        match kubernetes::claims(&self.driver_name, Duration::from_secs(self.kube_timeout_secs)).await {
            Ok(Answer::Claims(claims)) => (Some(claims), "asked".into()),
            Ok(Answer::NotConfigured(why)) => (None, format!("not asked: no configuration ({why})")),
            Err(err) => (None, format!("unreadable: {err}")),
        }
    }
}

/// A spinner on stderr naming what is being waited for; drawn only on a terminal.
fn progress() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = progress();
    let result = match cli.command {
        Command::Volumes(common) => volumes(&common, &progress).await,
        Command::Volume { id, common } => volume(&id, &common, &progress).await,
    };
    progress.finish_and_clear();
    match result {
        Ok((text, problems)) => {
            print!("{text}");
            for problem in &problems {
                eprintln!("swell: {problem}");
            }
            if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(err) => {
            eprintln!("swell: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The output and the problems met on the way.
type Shown = Result<(String, Vec<String>), CliError>;

async fn volumes(common: &Common, progress: &ProgressBar) -> Shown {
    progress.set_message("opening the backends");
    let reader = Reader::open(&common.backend)?;
    let mut found = reader.everything(|step| progress.set_message(step)).await;
    progress.set_message("reading auto-grow policies and usage");
    let ids = found.volumes.iter().map(|(_, volume)| volume.id.clone()).collect();
    let mut auto_grow = reader.auto_grow_states(ids, &mut found.problems).await;
    let (mut claims, kubernetes) = common.claims(progress).await;
    let now = now_unix();
    let mut views: Vec<VolumeView> = found
        .volumes
        .into_iter()
        .map(|(kind, volume)| {
            let (record, unreadable) = (found.records.remove(&volume.id), found.unreadable.remove(&volume.id));
            let (policy, usage) = auto_grow.remove(&volume.id).unwrap_or_default();
            let id = volume.id.to_string();
            let claim = claims.as_mut().and_then(|c| c.remove(&id));
            let view = VolumeView::new(id, kind, Some(volume.size_bytes), record, claim, now, common.stuck_after()).growing_by_itself(policy, usage);
            let view = if found.recorded_sizes.contains(&kind) { view.recorded() } else { view };
            match unreadable {
                Some(reason) => view.unreadable(reason),
                None => view,
            }
        })
        .collect();
    // Records whose volume the backend no longer has, read or not.
    views.extend(found.records.into_values().map(|record| {
        let id = record.volume_id.to_string();
        let claim = claims.as_mut().and_then(|c| c.remove(&id));
        let backend = record.volume_id.backend().to_owned();
        VolumeView::new(id, &backend, None, Some(record), claim, now, common.stuck_after())
    }));
    views.extend(found.unreadable.into_iter().map(|(volume, reason)| {
        let id = volume.to_string();
        let claim = claims.as_mut().and_then(|c| c.remove(&id));
        VolumeView::new(id, volume.backend(), None, None, claim, now, common.stuck_after()).unreadable(reason)
    }));
    views.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
    if kubernetes.starts_with("unreadable") {
        found.problems.push(format!("Kubernetes {kubernetes}"));
    }
    let text = match common.output {
        Output::Table => format!("{}\n", render::volumes(&views)),
        Output::Json => json_text(&json!({
            "volumes": views,
            "kubernetes": kubernetes,
            "problems": found.problems,
            "recorded_sizes": found.recorded_sizes,
        })),
    };
    Ok((text, found.problems))
}

async fn volume(raw: &str, common: &Common, progress: &ProgressBar) -> Shown {
    let id: VolumeId = raw.parse().map_err(|source| CliError::BadId { raw: raw.to_owned(), source })?;
    progress.set_message("opening the backends");
    let reader = Reader::open(&common.backend)?;
    progress.set_message(format!("reading {id}"));
    let one = reader.one(&id).await?;
    let (claims, kubernetes) = common.claims(progress).await;
    let claim = claims.and_then(|mut c| c.remove(raw));
    let kubernetes = match (&claim, kubernetes.as_str()) {
        (None, "asked") => "no PersistentVolume of this driver has this volume handle".to_owned(),
        _ => kubernetes,
    };
    if one.size.is_none() && one.record.is_none() {
        return Err(CliError::NoSuchVolume(id));
    }
    let view =
        VolumeView::new(id.to_string(), one.kind, one.size, one.record, claim, now_unix(), common.stuck_after()).growing_by_itself(one.auto_grow, one.usage);
    let problems = if kubernetes.starts_with("unreadable") { vec![format!("Kubernetes {kubernetes}")] } else { Vec::new() };
    let text = match common.output {
        Output::Table => format!("{}\n", render::volume(&view, &kubernetes)),
        Output::Json => json_text(&json!({ "volume": view, "kubernetes": kubernetes, "problems": problems })),
    };
    Ok((text, problems))
}

fn json_text(value: &serde_json::Value) -> String {
    // Serializing a Value cannot fail.
    format!("{}\n", serde_json::to_string_pretty(value).unwrap_or_default())
}
