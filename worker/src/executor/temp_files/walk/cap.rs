//! The walk's side of `max_files`: the count a capped run claims each file against, and
//! (for a real run) the count every copy of the task shares ([`super::claims`]).

use std::sync::atomic::Ordering;

use super::super::roots::TempRoot;
use super::claims::{Claim, Claims, ClaimsError};
use super::{root_error, Walk};
use crate::executor::ExecError;

impl Walk {
    /// Open the count every copy shares, before anything is deleted (a capped real run),
    /// or check that the real run could (its dry run). False: told to stop while another
    /// copy held the count; nothing was done.
    pub(super) fn open_count(&self, roots: &[TempRoot]) -> Result<bool, ExecError> {
        if self.max_files.is_none() {
            return Ok(true);
        }
        let euid = self.privileges.euid;
        if self.dry_run {
            // The real run would refuse: so does its dry run.
            Claims::check(roots, euid).map_err(claims_error)?;
            return Ok(true);
        }
        match Claims::open(roots, &self.resume, self.task_id, euid, &self.stop)
            .map_err(claims_error)?
        {
            Some(claims) => {
                let _ = self.claims.set(claims);
                Ok(true)
            }
            None => {
                self.interrupted.store(true, Ordering::SeqCst);
                Ok(false)
            }
        }
    }

    /// After the walk: give back what was claimed and not used, and fail the turn when the
    /// count could not be kept.
    pub(super) fn close_count(&self) -> Result<(), ExecError> {
        if let Some(claims) = self.claims.get() {
            // Not given back, they stay claimed: the task may delete fewer files, never more.
            if let Err(error) = claims.release() {
                tracing::warn!(%error, task_id = %self.task_id, "files claimed against max_files and not used could not be given back");
            }
        }
        match self.claims_failed.lock().expect("claims lock").take() {
            Some(error) => Err(claims_error(error)),
            None => Ok(()),
        }
    }

    /// Whether `max_files` is reached as far as this copy knows, before a file is looked at
    /// more closely.
    pub(super) fn capped(&self) -> bool {
        self.max_files
            .is_some_and(|cap| self.counters.claimed.load(Ordering::Relaxed) >= cap)
            || self.claims.get().is_some_and(|claims| claims.reached())
    }

    /// Claim one file against `max_files`. A real run claims from the count every copy
    /// shares; when that count cannot be kept, the walk stops (and fails).
    pub(super) fn claim(&self, cap: u64) -> Claim {
        let own = self.counters.claimed.load(Ordering::Relaxed);
        let claim = match self.claims.get() {
            Some(claims) => match claims.take(cap, own, &self.stop) {
                Ok(claim) => claim,
                Err(error) => {
                    self.stop.store(true, Ordering::SeqCst);
                    self.interrupted.store(true, Ordering::SeqCst);
                    self.claims_failed
                        .lock()
                        .expect("claims lock")
                        .get_or_insert(error);
                    return Claim::Stopped;
                }
            },
            None if own < cap => Claim::Granted,
            None => Claim::Capped,
        };
        match claim {
            Claim::Granted => {
                self.counters.claimed.fetch_add(1, Ordering::Relaxed);
            }
            // Told to stop while waiting for another copy: this entry is passed over.
            Claim::Stopped => self.interrupted.store(true, Ordering::SeqCst),
            Claim::Capped => {}
        }
        claim
    }
}

fn claims_error(error: ClaimsError) -> ExecError {
    match error {
        ClaimsError::Root(error) => root_error(error),
        ClaimsError::Refused(_) => ExecError::permanent(cannot_keep(&error)),
        ClaimsError::Io(_) => ExecError::transient(cannot_keep(&error)),
    }
}

fn cannot_keep(error: &ClaimsError) -> String {
    format!("max_files cannot be kept across copies of the task: {error}")
}
