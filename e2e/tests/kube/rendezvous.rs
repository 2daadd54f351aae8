//! One disruption for every backend: the disruptive scenarios (a node plugin
//! killed, a controller replica deleted) run once per backend, and the
//! backends' tests of one scenario meet here so that a single kill serves
//! them all (one kill a backend would double the lane's time). The last to
//! arrive at a step runs it while the others wait; a participant that fails
//! before it arrives breaks the meeting, so nobody waits for it forever.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the first participant waits for the others at a step.
const PATIENCE: Duration = Duration::from_secs(300);

#[derive(Default)]
struct State {
    arrived: usize,
    step: u64,
    broken: Option<String>,
}

#[derive(Default)]
struct Meeting {
    state: Mutex<State>,
    moved: Condvar,
}

/// A participant in the meeting named after its scenario.
pub(crate) struct Participant {
    meeting: Arc<Meeting>,
    parties: usize,
    who: String,
}

/// The backends taking part: SWELL_KUBE_BACKENDS (comma separated), by
/// default both. Running one backend's scenario alone needs it set.
pub(crate) fn parties() -> usize {
    std::env::var("SWELL_KUBE_BACKENDS").map(|v| v.split(',').filter(|s| !s.is_empty()).count()).unwrap_or(2).max(1)
}

/// Joins the meeting of `scenario` as `who` (the backend).
pub(crate) fn join(scenario: &str, who: &str) -> Participant {
    static MEETINGS: OnceLock<Mutex<HashMap<String, Arc<Meeting>>>> = OnceLock::new();
    let meeting = MEETINGS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner()).entry(scenario.to_owned()).or_default().clone();
    Participant { meeting, parties: parties(), who: who.to_owned() }
}

impl Participant {
    /// Waits until every participant reached this step; the last one runs
    /// `action` first. Panics if the meeting broke or the others never came.
    pub(crate) fn together(&self, step: &str, action: impl FnOnce()) {
        let mut state = self.meeting.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &state.broken {
            panic!("{step}: {why}");
        }
        let my_step = state.step;
        state.arrived += 1;
        if state.arrived == self.parties {
            drop(state);
            // The action runs unlocked; a panic in it breaks the meeting (Drop).
            action();
            let mut state = self.meeting.state.lock().unwrap_or_else(|p| p.into_inner());
            state.arrived = 0;
            state.step += 1;
            self.meeting.moved.notify_all();
            return;
        }
        let started = Instant::now();
        while state.step == my_step {
            if let Some(why) = &state.broken {
                panic!("{step}: {why}");
            }
            let left = PATIENCE.checked_sub(started.elapsed()).unwrap_or_else(|| {
                panic!("{step}: {} of {} participants came within {PATIENCE:?} (SWELL_KUBE_BACKENDS names who takes part)", state.arrived, self.parties)
            });
            state = self.meeting.moved.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.meeting.state.lock().unwrap_or_else(|p| p.into_inner());
            state.broken = Some(format!("the {} participant failed", self.who));
            self.meeting.moved.notify_all();
        }
    }
}
