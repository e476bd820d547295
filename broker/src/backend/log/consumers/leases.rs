//! Leases: which attachment holds each delivered, unsettled event and until when; the
//! walk's per-event decision, redeliveries, nacks and progress.

use std::time::{Duration, Instant};

use super::consumer::{attached, Consumer, Inner, Lease};

/// What a delivery task should do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not for this attachment: other topic, settled, or held by another.
    Skip,
    /// Deliver it; this is its delivery number.
    Deliver(u32),
    /// It was delivered `max_deliver` times (this many): move it to the dead-letter topic.
    DeadLetter(u32),
    /// `max_in_flight` reached: wait for a kick and ask again.
    NoRoom,
    /// The attachment is gone.
    Detached,
    /// A seek moved the consumer: start over from the floor.
    Restart,
}

impl Consumer {
    /// Decides about the event at `seq`, read by the walk of attachment `generation`.
    pub fn step(&self, generation: u64, epoch: u64, seq: u64, topic: &str, now: Instant) -> Step {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.epoch != epoch {
            return Step::Restart;
        }
        let Some(a) = attached(&mut inner.attachments, generation) else {
            return Step::Detached;
        };
        let settled = inner.state.is_acked(seq) || !self.matches(topic);
        // Settled, not ours, or held by a shared peer: passed over, but read.
        if settled || inner.leases.contains_key(&seq) {
            a.read_upto = a.read_upto.max(seq);
            return Step::Skip;
        }
        if a.held >= a.options.max_in_flight {
            return Step::NoRoom;
        }
        a.read_upto = a.read_upto.max(seq);
        inner.orphans.remove(&seq);
        Self::lease(inner, generation, seq, now)
    }

    /// Leases `seq` to `generation` and says which delivery it would be (or that it is dead).
    /// The delivery is counted only once the frame is handed to the connection
    /// ([`Consumer::handed_over`]): a closed or too-slow connection delivered nothing.
    pub(super) fn lease(inner: &mut Inner, generation: u64, seq: u64, now: Instant) -> Step {
        let before_start = u32::from(seq <= inner.loaded_through);
        let so_far = inner.deliveries.get(&seq).copied().unwrap_or(before_start);
        let Some(a) = attached(&mut inner.attachments, generation) else {
            return Step::Detached;
        };
        let dead = a.options.max_deliver > 0 && so_far >= a.options.max_deliver;
        if dead && !inner.dead_lettering.insert(seq) {
            // Another walk (before a takeover, or a shared peer) is moving it already.
            return Step::Skip;
        }
        // A dead letter stays leased until its move is durable, so nobody delivers it again.
        let wait = if dead {
            Duration::from_secs(86_400)
        } else {
            a.options.ack_wait
        };
        let deadline = now + wait;
        let previous = inner.leases.insert(
            seq,
            Lease {
                holder: generation,
                deadline,
            },
        );
        match previous {
            Some(p) if p.holder == generation => {
                a.timers.remove(&(p.deadline, seq));
            }
            _ => a.held += 1,
        }
        a.timers.insert((deadline, seq), ());
        if dead {
            return Step::DeadLetter(so_far);
        }
        Step::Deliver(so_far.saturating_add(1))
    }

    /// The frame of delivery `count` of `seq`, leased in `epoch`, reached the connection's
    /// queue: count it. A seek since then started the counts over: the old count is not
    /// brought back.
    pub fn handed_over(&self, seq: u64, count: u32, epoch: u64) {
        self.handed_over_all(&[(seq, count)], epoch);
    }

    /// [`Consumer::handed_over`] for every `(seq, count)` of one frame, under one lock.
    pub fn handed_over_all(&self, delivered: &[(u64, u32)], epoch: u64) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.delivered += delivered.len() as u64;
        if inner.epoch != epoch {
            return;
        }
        for &(seq, count) in delivered {
            Self::count_delivery(inner, seq, count);
        }
    }

    fn count_delivery(inner: &mut Inner, seq: u64, count: u32) {
        if inner.state.is_acked(seq) {
            return;
        }
        let known = inner.deliveries.get(&seq).copied().unwrap_or(0);
        inner.deliveries.insert(seq, known.max(count));
        if count == 1 {
            inner.delivered_through = inner.delivered_through.max(seq);
        }
    }

    /// A dead letter's append is over: stored (then the record settled it), or failed, in
    /// which case the event is tried again after `retry`.
    pub fn dead_letter_done(&self, seq: u64, stored: bool, retry: Duration, now: Instant) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.dead_lettering.remove(&seq);
        if stored {
            return;
        }
        let Some(lease) = inner.leases.get_mut(&seq) else {
            return;
        };
        if let Some(a) = attached(&mut inner.attachments, lease.holder) {
            a.timers.remove(&(lease.deadline, seq));
            lease.deadline = now + retry;
            a.timers.insert((lease.deadline, seq), ());
            a.kick.notify_one();
        }
    }

    /// A seq this attachment should deliver again now: its ack wait ran out or it was
    /// nacked, or (shared mode) another attachment left it behind.
    pub fn next_due(&self, generation: u64, now: Instant) -> Option<u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let a = attached(&mut inner.attachments, generation)?;
        while let Some(((deadline, seq), _)) = a.timers.first() {
            if deadline > now {
                break;
            }
            a.timers.pop_first();
            if inner
                .leases
                .get(&seq)
                .is_some_and(|l| l.holder == generation && l.deadline == deadline)
            {
                return Some(seq);
            }
        }
        if a.held < a.options.max_in_flight {
            return inner.orphans.first().copied();
        }
        None
    }

    /// Claims a due seq for delivery (see [`Consumer::next_due`]).
    pub fn redeliver(&self, generation: u64, epoch: u64, seq: u64, now: Instant) -> Step {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.epoch != epoch {
            return Step::Restart;
        }
        if inner.state.is_acked(seq) {
            inner.release(seq);
            return Step::Skip;
        }
        let ours = match inner.leases.get(&seq) {
            Some(l) => l.holder == generation,
            None => inner.orphans.remove(&seq),
        };
        if !ours {
            return Step::Skip;
        }
        Self::lease(inner, generation, seq, now)
    }

    /// When the next timer of this attachment runs out.
    pub fn next_deadline(&self, generation: u64) -> Option<Instant> {
        let mut inner = self.lock();
        inner
            .attachment(generation)?
            .timers
            .first()
            .map(|((d, _), _)| d)
    }

    /// The event at `seq` could not be read: give its lease up.
    pub fn drop_lease(&self, seq: u64) {
        self.lock().release(seq);
    }

    /// Restarts the ack wait (`delay` None: the holder's ack wait) of leased seqs.
    /// Returns the first seq that is not in flight, if any (nothing is changed then).
    pub fn touch(&self, seqs: &[u64], delay: Option<Duration>, now: Instant) -> Result<(), u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(&missing) = seqs.iter().find(|s| !inner.leases.contains_key(s)) {
            return Err(missing);
        }
        for &seq in seqs {
            let Some(lease) = inner.leases.get_mut(&seq) else {
                continue;
            };
            let Some(a) = attached(&mut inner.attachments, lease.holder) else {
                continue;
            };
            a.timers.remove(&(lease.deadline, seq));
            lease.deadline = now + delay.unwrap_or(a.options.ack_wait);
            a.timers.insert((lease.deadline, seq), ());
            a.kick.notify_one();
        }
        Ok(())
    }
}
