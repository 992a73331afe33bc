//! Circuit breakers, one per destination (`scheme://host:port`, SPEC §4).
//!
//! Each [`Breaker`] is a small state machine with the clock passed in, so
//! tests drive it with explicit instants:
//!
//! ```text
//! Closed { failures } --failures reach the threshold--> Open { until }
//! Open { until }      --now >= until-----------------> HalfOpen (one trial)
//! HalfOpen            --trial succeeds---------------> Closed { 0 }
//! HalfOpen            --trial fails------------------> Open { now + cooldown }
//! ```
//!
//! While half-open exactly one call (the trial) is let through; the others
//! are told to wait. A trial that ends without a verdict (its future was
//! dropped) frees the slot for the next caller instead of wedging the
//! breaker half-open forever.
//!
//! [`Breakers`] keys them by destination behind one short `Mutex` that is
//! never held across an `.await`, and publishes each state change as the
//! gauge `inlet_breaker_state{destination}` (0 closed, 1 half-open, 2 open).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use std::time::Instant;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

impl State {
    /// The name `/health` shows.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    /// The value of `inlet_breaker_state`.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed { .. } => 0.0,
            State::HalfOpen { .. } => 1.0,
            State::Open { .. } => 2.0,
        }
    }
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go; `trial` is true for the one half-open probe.
    Go { trial: bool },
    /// Do not call; ask again after this long.
    Wait(Duration),
}

/// How a call that was let through ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The destination answered (2xx, or a 4xx that says it is up).
    Up,
    /// Timeout, connection error, 408, 429 or 5xx.
    Down,
    /// The call never finished (cancelled): no evidence either way.
    Abandoned,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    /// `threshold` consecutive failures open it (0 is read as 1);
    /// `cooldown` later it half-opens.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: State::Closed { failures: 0 },
            threshold: threshold.max(1),
            cooldown,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Moves `Open` on to `HalfOpen` once its cooldown has passed.
    pub fn tick(&mut self, now: Instant) {
        if let State::Open { until } = self.state
            && now >= until
        {
            self.state = State::HalfOpen {
                trial_in_flight: false,
            };
        }
    }

    /// Asks to make a call at `now`. A `Go { trial: true }` must be
    /// followed by [`Breaker::record`] (or the half-open slot stays taken).
    pub fn admit(&mut self, now: Instant) -> Admission {
        self.tick(now);
        match self.state {
            State::Closed { .. } => Admission::Go { trial: false },
            State::Open { until } => Admission::Wait(until - now),
            State::HalfOpen {
                trial_in_flight: false,
            } => {
                self.state = State::HalfOpen {
                    trial_in_flight: true,
                };
                Admission::Go { trial: true }
            }
            // The trial's verdict is due within one call timeout; callers
            // come back a little later rather than a whole cooldown.
            State::HalfOpen {
                trial_in_flight: true,
            } => Admission::Wait(self.half_open_wait()),
        }
    }

    /// Records how a call let through by [`Breaker::admit`] ended.
    pub fn record(&mut self, trial: bool, verdict: Verdict, now: Instant) {
        self.state = match (self.state, verdict) {
            (State::HalfOpen { .. }, Verdict::Up) if trial => State::Closed { failures: 0 },
            (State::HalfOpen { .. }, Verdict::Down) if trial => State::Open {
                until: now + self.cooldown,
            },
            (State::HalfOpen { .. }, Verdict::Abandoned) if trial => State::HalfOpen {
                trial_in_flight: false,
            },
            // A call admitted while closed that ends after the breaker
            // moved on says nothing about the trial: leave it alone.
            (state @ (State::HalfOpen { .. } | State::Open { .. }), _) => state,
            (State::Closed { .. }, Verdict::Up) => State::Closed { failures: 0 },
            (State::Closed { failures }, Verdict::Down) => {
                let failures = failures.saturating_add(1);
                if failures >= self.threshold {
                    State::Open {
                        until: now + self.cooldown,
                    }
                } else {
                    State::Closed { failures }
                }
            }
            (state @ State::Closed { .. }, Verdict::Abandoned) => state,
        };
    }

    pub(crate) fn half_open_wait(&self) -> Duration {
        self.cooldown
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(10))
    }
}

/// The breakers of every destination called since start.
#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration) -> Arc<Self> {
        Arc::new(Self {
            threshold,
            cooldown,
            inner: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Breaker>> {
        // A panic while holding this lock leaves only plain data behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the destination's breaker (created closed on first use)
    /// and publishes the gauge if the state's kind changed.
    fn with<T>(&self, destination: &str, now: Instant, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut map = self.lock();
        let new = !map.contains_key(destination);
        let breaker = map
            .entry(destination.to_string())
            .or_insert_with(|| Breaker::new(self.threshold, self.cooldown));
        let before = breaker.state();
        breaker.tick(now);
        let out = f(breaker);
        let after = breaker.state();
        if new || before.name() != after.name() {
            metrics::gauge!("inlet_breaker_state", "destination" => destination.to_string())
                .set(after.gauge());
            if !new {
                tracing::info!(
                    destination,
                    from = before.name(),
                    to = after.name(),
                    "Circuit breaker changed state."
                );
            }
        }
        out
    }

    /// Asks to call `destination`; a `Go` comes with a [`Permit`] that
    /// must be given a verdict (dropping it unresolved counts as abandoned).
    pub fn admit(self: &Arc<Self>, destination: &str, now: Instant) -> Result<Permit, Duration> {
        match self.with(destination, now, |b| b.admit(now)) {
            Admission::Go { trial } => Ok(Permit {
                breakers: self.clone(),
                destination: destination.to_string(),
                trial,
                done: false,
            }),
            Admission::Wait(d) => Err(d),
        }
    }

    /// The state of every destination called since start, as `/health`
    /// shows it.
    pub fn snapshot(&self) -> BTreeMap<String, &'static str> {
        self.snapshot_at(Instant::now())
    }

    /// [`Breakers::snapshot`] as of `now`.
    pub fn snapshot_at(&self, now: Instant) -> BTreeMap<String, &'static str> {
        let keys: Vec<String> = self.lock().keys().cloned().collect();
        keys.into_iter()
            .map(|k| {
                let name = self.with(&k, now, |b| b.state().name());
                (k, name)
            })
            .collect()
    }

    /// Whether a call to `destination` would go through now, without
    /// asking for it (no trial slot is taken): `None` when it would,
    /// `Some(wait)` while the breaker is open or its one trial is in flight.
    /// Workers use this to leave that destination's jobs where they are.
    pub fn blocked_for(&self, destination: &str, now: Instant) -> Option<Duration> {
        let mut map = self.lock();
        let breaker = map.get_mut(destination)?;
        breaker.tick(now);
        match breaker.state() {
            State::Open { until } => Some(until.saturating_duration_since(now)),
            State::HalfOpen {
                trial_in_flight: true,
            } => Some(breaker.half_open_wait()),
            _ => None,
        }
    }

    /// The current state of one destination, if it was ever called.
    pub fn state(&self, destination: &str) -> Option<State> {
        self.lock().get(destination).map(|b| b.state())
    }
}

/// Leave to make one call; resolve it with [`Permit::finish`].
#[derive(Debug)]
pub struct Permit {
    breakers: Arc<Breakers>,
    destination: String,
    trial: bool,
    done: bool,
}

impl Permit {
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    pub fn finish(self, verdict: Verdict) {
        self.finish_at(verdict, Instant::now());
    }

    /// [`Permit::finish`] as of `now`.
    pub fn finish_at(mut self, verdict: Verdict, now: Instant) {
        self.resolve(verdict, now);
    }

    fn resolve(&mut self, verdict: Verdict, now: Instant) {
        if self.done {
            return;
        }
        self.done = true;
        let trial = self.trial;
        self.breakers
            .with(&self.destination, now, |b| b.record(trial, verdict, now));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.resolve(Verdict::Abandoned, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    fn go(b: &mut Breaker, now: Instant) -> bool {
        match b.admit(now) {
            Admission::Go { trial } => trial,
            Admission::Wait(d) => panic!("expected go, told to wait {d:?}"),
        }
    }

    /// A breaker opened by one failure, and the instant its cooldown ends.
    fn failed_once() -> (Breaker, Instant) {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, COOLDOWN);
        go(&mut b, t0);
        b.record(false, Verdict::Down, t0);
        (b, t0 + COOLDOWN)
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOLDOWN);
        for _ in 0..2 {
            assert!(!go(&mut b, t0));
            b.record(false, Verdict::Down, t0);
        }
        assert_eq!(b.state(), State::Closed { failures: 2 });
        go(&mut b, t0);
        b.record(false, Verdict::Down, t0);
        assert_eq!(
            b.state(),
            State::Open {
                until: t0 + COOLDOWN
            }
        );
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)),
            Admission::Wait(Duration::from_secs(6))
        );
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOLDOWN);
        for v in [
            Verdict::Down,
            Verdict::Down,
            Verdict::Up,
            Verdict::Down,
            Verdict::Down,
        ] {
            go(&mut b, t0);
            b.record(false, v, t0);
        }
        assert_eq!(b.state(), State::Closed { failures: 2 });
    }

    #[test]
    fn half_opens_after_cooldown_with_exactly_one_trial() {
        let (mut b, later) = failed_once();
        assert!(
            go(&mut b, later),
            "the first caller after cooldown is the trial"
        );
        assert_eq!(
            b.state(),
            State::HalfOpen {
                trial_in_flight: true
            }
        );
        assert!(matches!(b.admit(later), Admission::Wait(_)));
        assert!(matches!(
            b.admit(later + Duration::from_millis(1)),
            Admission::Wait(_)
        ));
    }

    #[test]
    fn trial_success_closes_and_failure_reopens() {
        let (mut b, t1) = failed_once();
        assert!(go(&mut b, t1));
        b.record(true, Verdict::Down, t1);
        assert_eq!(
            b.state(),
            State::Open {
                until: t1 + COOLDOWN
            }
        );

        let t2 = t1 + COOLDOWN;
        assert!(go(&mut b, t2));
        b.record(true, Verdict::Up, t2);
        assert_eq!(b.state(), State::Closed { failures: 0 });
        assert!(!go(&mut b, t2));
    }

    #[test]
    fn an_abandoned_trial_frees_the_slot() {
        let (mut b, t1) = failed_once();
        assert!(go(&mut b, t1));
        b.record(true, Verdict::Abandoned, t1);
        assert!(go(&mut b, t1), "the next caller becomes the trial");
    }

    #[test]
    fn late_results_of_ordinary_calls_do_not_decide_the_trial() {
        let (mut b, t1) = failed_once();
        assert!(go(&mut b, t1));
        b.record(false, Verdict::Up, t1);
        assert_eq!(
            b.state(),
            State::HalfOpen {
                trial_in_flight: true
            }
        );
    }

    #[test]
    fn registry_tracks_every_destination_through_a_full_cycle() {
        let cooldown = Duration::from_millis(500);
        let breakers = Breakers::new(2, cooldown);
        let t0 = Instant::now();
        let up = "http://127.0.0.1:1";
        let down = "http://127.0.0.1:2";
        breakers.admit(up, t0).unwrap().finish_at(Verdict::Up, t0);
        for _ in 0..2 {
            breakers
                .admit(down, t0)
                .unwrap()
                .finish_at(Verdict::Down, t0);
        }
        assert_eq!(
            breakers.snapshot_at(t0),
            BTreeMap::from([(up.to_string(), "closed"), (down.to_string(), "open")])
        );
        assert_eq!(breakers.admit(down, t0).unwrap_err(), cooldown);

        let t1 = t0 + cooldown;
        assert_eq!(breakers.snapshot_at(t1)[down], "half_open");
        let trial = breakers.admit(down, t1).unwrap();
        assert!(trial.is_trial());
        assert!(breakers.admit(down, t1).is_err(), "one trial only");
        drop(trial); // cancelled: no verdict
        let trial = breakers.admit(down, t1).unwrap();
        trial.finish_at(Verdict::Up, t1);
        assert_eq!(breakers.snapshot_at(t1)[down], "closed");
        assert_eq!(breakers.state(up), Some(State::Closed { failures: 0 }));
    }
}
