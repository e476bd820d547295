//! What records do to a consumer: settles (with the floor they may carry), gaps left by
//! retention, seeks, and the delivered-through marks.

use super::consumer::Consumer;
use crate::backend::log::settled::Settle;

impl Consumer {
    /// The floor an ack of `seqs` may carry (every matching event at or below it is settled
    /// once these are, or was never for this consumer), and the seek count it is valid under.
    pub fn floor_for_settle(&self, seqs: &[u64]) -> (u64, u64) {
        let inner = self.lock();
        let floor = inner.state.floor;
        let seeks = inner.state.seeks;
        let Some(covered) = inner.attachments.iter().map(|a| a.read_upto).max() else {
            return (floor, seeks);
        };
        // Both are ordered: the first open one of each is found within len(seqs) steps
        // (a scan of every lease against every acked seq was 7% of replay's instructions).
        let mut acking = seqs.to_vec();
        acking.sort_unstable();
        let is_open = |s: &u64| acking.binary_search(s).is_err();
        let open = [
            inner.leases.keys().find(is_open),
            inner.orphans.iter().copied().find(is_open),
        ]
        .into_iter()
        .flatten()
        .min();
        let limit = match open {
            Some(s) => covered.min(s - 1),
            None => covered,
        };
        (limit.max(floor), seeks)
    }

    /// Applies a settle; `seeks` is the seek count its floor was computed under (`None`: a
    /// first-format record, whose floor always applies).
    pub(super) fn apply_settle(
        &self,
        seqs: &[u64],
        floor: u64,
        kind: Settle,
        seeks: Option<u64>,
    ) -> Vec<u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let floor = match seeks {
            Some(seeks) if seeks != inner.state.seeks => None,
            _ => Some(floor),
        };
        inner.state.apply_settle(seqs, floor, kind);
        // What this settle newly acks: everything up to the floor, and `seqs` above it (any
        // other acked seq was settled, and dropped from these maps, by an earlier record).
        let floor = inner.state.floor;
        let above = || seqs.iter().copied().filter(move |&s| s > floor);
        // Acks come mostly in order: what the floor covers leaves the fronts of the ordered
        // maps, the rest is looked up one by one.
        let mut acked: Vec<(u64, u32)> = Vec::new();
        while inner.deliveries.first().is_some_and(|(s, _)| s <= floor) {
            acked.extend(inner.deliveries.pop_first());
        }
        for s in above() {
            if let Some(c) = inner.deliveries.remove(&s) {
                acked.push((s, c));
            }
        }
        // Only counts that may be in sled: redeliveries, and what was loaded from it.
        let loaded = inner.loaded_through;
        let settled: Vec<u64> = acked
            .into_iter()
            .filter(|&(s, c)| c >= 2 || s <= loaded)
            .map(|(s, _)| s)
            .collect();
        let mut released = Vec::new();
        while inner.leases.first().is_some_and(|(s, _)| s <= floor) {
            released.extend(inner.leases.pop_first());
        }
        for s in above() {
            if let Some(lease) = inner.leases.remove(&s) {
                released.push((s, lease));
            }
        }
        while inner.orphans.first().is_some_and(|&s| s <= floor) {
            inner.orphans.pop_first();
        }
        for s in above() {
            inner.orphans.remove(&s);
        }
        inner.let_go(released);
        settled
    }

    /// Applies a `ConsumerGap`: the floor moves past what retention removed, walks restart
    /// there, and attached subscriptions are told.
    pub(super) fn apply_gap(&self, from: u64, to: u64) -> Vec<u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if !inner.state.gap(from, to) {
            return Vec::new();
        }
        let floor = inner.state.floor;
        let gone: Vec<u64> = inner
            .leases
            .keys()
            .chain(inner.orphans.iter().copied())
            .filter(|&s| s <= floor)
            .collect();
        for s in gone {
            inner.release(s);
        }
        let settled: Vec<u64> = inner.deliveries.keys().filter(|&s| s <= floor).collect();
        inner.deliveries.retain(|s, _| s > floor);
        inner.epoch += 1;
        // The walks restart; each tells its subscriber of the gap, which stays in the
        // consumer's durable state until one did.
        for a in &mut inner.attachments {
            a.read_upto = a.read_upto.max(floor);
            a.kick.notify_one();
        }
        settled
    }

    /// Retention removed unsettled seqs that no subscriber has been told of.
    pub fn untold_gap(&self) -> Option<(u64, u64)> {
        self.lock().state.untold_gap
    }

    /// Sets the delivered-through mark loaded from the state view, if it was saved under
    /// the seek count of the loaded state: a mark from before a seek would count the seqs
    /// the seek made new again as delivered.
    pub fn set_loaded_through(&self, seeks: u64, through: u64) {
        let mut inner = self.lock();
        if seeks != inner.state.seeks {
            return;
        }
        inner.loaded_through = through;
        inner.delivered_through = inner.delivered_through.max(through);
        inner.mark_saved = inner.delivered_through;
    }

    /// The delivered-through mark with the seek count it belongs to, if it moved since it
    /// was last taken.
    pub(super) fn take_mark(&self) -> Option<(u64, u64)> {
        let mut inner = self.lock();
        (inner.delivered_through != inner.mark_saved).then(|| {
            inner.mark_saved = inner.delivered_through;
            (inner.state.seeks, inner.delivered_through)
        })
    }

    pub(super) fn apply_seek(&self, floor: u64) -> Vec<u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.state.seek(floor);
        inner.leases.clear();
        inner.orphans.clear();
        let reset: Vec<u64> = inner.deliveries.keys().filter(|&s| s > floor).collect();
        inner.deliveries.retain(|s, _| s <= floor);
        inner.loaded_through = inner.loaded_through.min(floor);
        inner.delivered_through = inner.delivered_through.min(floor);
        // Saved again under the new seek count, even if it did not move.
        inner.mark_saved = u64::MAX;
        inner.epoch += 1;
        for a in &mut inner.attachments {
            a.held = 0;
            a.timers.clear();
            a.read_upto = floor;
            a.kick.notify_one();
        }
        reset
    }
}
