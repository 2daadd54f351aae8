//! "Expansion never gets stuck", written once and run on every backend:
//! racing expansions of one volume, many volumes at once, engines that lie
//! about what they did (the Longhorn 13379 family), and a controller process
//! SIGKILLed mid-expansion again and again. A test file names the scenario
//! and the [`Engine`] to run it on; all calls go over the controller's gRPC
//! socket, and expansion state is read through [`crate::observe`].

mod chaos;
mod engine;
mod lies;
mod races;

pub use chaos::{ChaosPlan, controller_killed_mid_expansion};
pub use engine::{Engine, InProcess, Local, create, delete, expand};
pub use lies::a_lying_engine_is_never_believed;
pub use races::{racing_expansions_of_one_volume, volumes_expand_in_parallel};
