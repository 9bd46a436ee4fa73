//! The oracle's model of a room's retention (docs/PROTOCOL.md, settings: "Retention keeps
//! at most `history_max` records and none older than `history_max_age_ms`"), written from
//! the protocol with no product type reused: settings are learned from the admin action's
//! confirmations and from `room/settings` as a restore finds it (parsed with `serde_json`),
//! record timestamps from the acknowledged frames ([`Record`]).
//!
//! A room keeps a run of consecutive ids ending at its newest acknowledged one; what the
//! model tracks is where that run may start, as a range `[lo, hi]`:
//! - `hi` (everything from `hi` up is surely held, in memory and in storage): the room may
//!   have trimmed by count under any `history_max` possibly in force (the configured window
//!   caps it), and by age any record older than `history_max_age_ms` on the newest clock
//!   reading the room may have had. Trimming is one-way in memory, so `hi` never comes
//!   back down: a possibility dropped (a confirmation, a restore) is folded into it first.
//! - `lo` (nothing below `lo` is held in memory): the room trims by count at every durable
//!   batch, settings change and restore, so it holds at most the largest possible count; by
//!   age it trims surely at a join (against the join's own `now`), so a join's `lo` also
//!   drops what every possible `history_max_age_ms` ages out then. Storage may hold more
//!   than memory (a trim's deletes go out with the next batch), and a restore brings those
//!   back and trims them again under the settings in force then; storage's checks use `hi`
//!   (what it must hold) and the configured window (what it may hold).
//!
//! While a change is asked but not confirmed, the old and the new value are both possible;
//! a confirmation settles the field (only later requests stay possible), a restore settles
//! everything (a request not yet durable at a crash is lost with it). In a room where no
//! retention setting was ever asked, `lo = hi = newest + 1 - history_retained_max` exactly,
//! as the checks assumed before retention was modelled.

use std::collections::BTreeMap;

use crate::moderation::Record;

/// One room's retention, as the oracle knows it.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// A retention setting was asked for in this room at least once.
    pub changed: bool,
    /// A `history_max_age_ms` was asked for at least once.
    pub age_ever: bool,
    /// `history_max` surely in force as of the last settling event (confirmation, restore).
    max_base: Option<u32>,
    /// `history_max` requests handled since, in order: (request, value).
    max_asked: Vec<(u64, Option<u32>)>,
    /// Likewise for `history_max_age_ms`.
    age_base: Option<u64>,
    /// `history_max_age_ms` requests handled since.
    age_asked: Vec<(u64, Option<u64>)>,
    /// Folded `hi`: trims that possibilities since dropped may have made.
    floor: u64,
    /// The newest room clock reading seen (ms).
    now_max: u64,
}

/// The settings' retention fields as stored in `room/settings` (absent or `null`: none).
pub fn stored_settings(value: &str) -> (Option<u32>, Option<u64>) {
    let json: Option<serde_json::Value> = serde_json::from_str(value).ok();
    let field = |name: &str| json.as_ref().and_then(|j| j.get(name)?.as_u64());
    (
        field("history_max").and_then(|m| u32::try_from(m).ok()),
        field("history_max_age_ms"),
    )
}

impl Retention {
    /// The possible record counts kept: `history_max` capped by the configured window.
    fn counts(&self, retained: u64) -> (u64, u64) {
        let count = |max: &Option<u32>| max.map_or(retained, |m| u64::from(m).min(retained));
        let all = std::iter::once(&self.max_base).chain(self.max_asked.iter().map(|(_, m)| m));
        all.map(count)
            .fold((u64::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)))
    }

    /// The possible ages: the shortest one possibly in force (`None`: none ages anything),
    /// and the longest, if every possibility ages records.
    fn ages(&self) -> (Option<u64>, Option<u64>) {
        let all: Vec<Option<u64>> = std::iter::once(self.age_base)
            .chain(self.age_asked.iter().map(|(_, a)| *a))
            .collect();
        let shortest = all.iter().flatten().min().copied();
        let longest = all
            .iter()
            .try_fold(0, |longest: u64, age| age.map(|a| longest.max(a)));
        (shortest, longest)
    }

    /// The most records the room may keep under the settings possibly in force (at most
    /// `retained`, the configured window). Storage keeps at most this many right after a
    /// commit: a batch trims storage to the count in force when it was built, which stays
    /// possible until the batch is durable (a confirmation comes only with a durable batch,
    /// one at a time, and a crash voids the batch in flight).
    pub fn count_max(&self, retained: u64) -> u64 {
        self.counts(retained).1
    }

    /// The room's clock read `now` (ms) at an input.
    pub fn observe_now(&mut self, now: u64) {
        self.now_max = self.now_max.max(now);
    }

    /// Everything from the returned id up to `newest` is surely held (in memory when
    /// resident, and in storage): `hi`, at most `newest + 1`. `acked` gives the timestamps.
    pub fn surely_from(
        &self,
        acked: &BTreeMap<u64, std::sync::Arc<str>>,
        newest: u64,
        retained: u64,
        now: u64,
    ) -> u64 {
        let (count_min, _) = self.counts(retained);
        let mut hi = self
            .floor
            .max((newest + 1).saturating_sub(count_min).max(1));
        if let (Some(age), true) = (self.ages().0, self.changed) {
            let cut = self.now_max.max(now).saturating_sub(age);
            hi = first_not_older(acked, hi, newest, cut);
        }
        hi.min(newest + 1)
    }

    /// Nothing below the returned id is held in memory (`lo`); `join_now`: the clock of a
    /// join that just trimmed.
    pub fn lowest(
        &self,
        acked: &BTreeMap<u64, std::sync::Arc<str>>,
        newest: u64,
        retained: u64,
        join_now: Option<u64>,
    ) -> u64 {
        let (_, count_max) = self.counts(retained);
        let mut lo = (newest + 1).saturating_sub(count_max).max(1);
        if let (Some(now), Some(age)) = (join_now, self.ages().1) {
            lo = first_not_older(acked, lo, newest, now.saturating_sub(age));
        }
        lo.min(newest + 1)
    }

    /// Folds the trims the current possibilities may have made into `hi`, before one is
    /// dropped.
    fn fold(&mut self, acked: &BTreeMap<u64, std::sync::Arc<str>>, retained: u64) {
        let newest = acked.keys().next_back().copied().unwrap_or(0);
        self.floor = self.surely_from(acked, newest, retained, 0);
    }

    /// A settings request handled by the room: its retention fields become possible.
    pub fn asked(&mut self, request: u64, max: Option<Option<u32>>, age: Option<Option<u64>>) {
        if let Some(max) = max {
            self.changed = true;
            self.max_asked.push((request, max));
        }
        if let Some(age) = age {
            self.changed = true;
            self.age_ever |= age.is_some();
            self.age_asked.push((request, age));
        }
    }

    /// Settings request `request` was confirmed: its fields are in force (later requests
    /// stay possible).
    pub fn confirmed(
        &mut self,
        acked: &BTreeMap<u64, std::sync::Arc<str>>,
        retained: u64,
        request: u64,
        max: Option<Option<u32>>,
        age: Option<Option<u64>>,
    ) {
        if max.is_none() && age.is_none() {
            return;
        }
        self.fold(acked, retained);
        if let Some(max) = max {
            self.max_base = max;
            self.max_asked.retain(|(r, _)| *r > request);
        }
        if let Some(age) = age {
            self.age_base = age;
            self.age_asked.retain(|(r, _)| *r > request);
        }
    }

    /// A restore found these settings (`None`: no `room/settings`): exactly what is in
    /// force.
    pub fn restored(
        &mut self,
        acked: &BTreeMap<u64, std::sync::Arc<str>>,
        retained: u64,
        settings: (Option<u32>, Option<u64>),
    ) {
        if !self.changed {
            return;
        }
        self.fold(acked, retained);
        (self.max_base, self.age_base) = settings;
        self.max_asked.clear();
        self.age_asked.clear();
    }
}

/// The first id from `from` up to `newest` whose record is not older than `cut` (its
/// timestamp at least `cut`), else `newest + 1`. Timestamps increase with ids.
fn first_not_older(
    acked: &BTreeMap<u64, std::sync::Arc<str>>,
    from: u64,
    newest: u64,
    cut: u64,
) -> u64 {
    if from > newest {
        return newest + 1;
    }
    acked
        .range(from..=newest)
        .find(|(_, frame)| Record::parse(frame).is_none_or(|r| r.ts >= cut))
        .map_or(newest + 1, |(id, _)| (*id).max(from))
}

/// Whether a run of ids starting at `start` fits a start of the held run anywhere in
/// `[lo, hi]` seen through `clamp` (monotone).
pub fn start_fits(start: u64, (lo, hi): (u64, u64), clamp: impl Fn(u64) -> u64) -> bool {
    clamp(lo) <= start && start <= clamp(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(stamps: &[(u64, u64)]) -> BTreeMap<u64, std::sync::Arc<str>> {
        stamps
            .iter()
            .map(|(id, ts)| {
                let frame = format!(r#"{{"id":{id},"name":"u","message":"m","timestamp":{ts}}}"#);
                (*id, frame.into())
            })
            .collect()
    }

    #[test]
    fn unchanged_is_the_configured_window() {
        let r = Retention::default();
        let a = acked(&[(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)]);
        assert_eq!(r.surely_from(&a, 5, 3, 1_000), 3);
        assert_eq!(r.lowest(&a, 5, 3, Some(1_000)), 3);
    }

    #[test]
    fn asked_is_a_range_confirmed_is_exact_and_one_way() {
        let mut r = Retention::default();
        let a = acked(&[(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)]);
        r.asked(7, Some(Some(1)), None);
        assert_eq!(
            (r.lowest(&a, 5, 4, None), r.surely_from(&a, 5, 4, 0)),
            (2, 5)
        );
        r.confirmed(&a, 4, 7, Some(Some(1)), None);
        assert_eq!(
            (r.lowest(&a, 5, 4, None), r.surely_from(&a, 5, 4, 0)),
            (5, 5)
        );
        r.asked(8, Some(None), None);
        r.confirmed(&a, 4, 8, Some(None), None);
        // Raising brings nothing back: held from 5 at most, at least the window.
        assert_eq!(
            (r.lowest(&a, 5, 4, None), r.surely_from(&a, 5, 4, 0)),
            (2, 5)
        );
    }

    #[test]
    fn age_is_exact_at_a_join_and_bounded_otherwise() {
        let mut r = Retention::default();
        let a = acked(&[(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)]);
        r.asked(1, None, Some(Some(15)));
        r.confirmed(&a, 10, 1, None, Some(Some(15)));
        // At 45 records before 30 are trimmed: 3 is kept (30 >= 30).
        assert_eq!(r.lowest(&a, 5, 10, Some(45)), 3);
        assert_eq!(r.surely_from(&a, 5, 10, 45), 3);
        assert_eq!(r.surely_from(&a, 5, 10, 100), 6, "everything aged out");
        assert!(start_fits(3, (3, 3), |o| o));
    }
}
