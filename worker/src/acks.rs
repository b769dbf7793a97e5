//! The acks of one consuming channel, sent together where they can be.
//!
//! A delivery is acked only once its task's result is confirmed, and tasks end in any
//! order. RabbitMQ spends less than half the CPU on one ack that settles sixteen
//! deliveries (`multiple`) as on sixteen acks of one (`deploy/bench/broker.sh`), but
//! `multiple` settles every delivery of the channel up to its tag: it is right only for a
//! run of deliveries that are all done, from the oldest the channel still holds.
//!
//! So [`Acks`] keeps the channel's deliveries in tag order from the moment the consume
//! loop takes them ([`Acks::take`]), and one task sends what their handlers ask for
//! ([`Taken::ack`], [`Taken::reject`]). What was asked for while the last settlements went
//! out goes out together:
//!
//! - each rejection on its own, first (a `multiple` sent before it would ack it);
//! - one ack with `multiple` for the done deliveries at the front (a plain ack for one);
//! - nothing for a delivery asked to be settled twice (RabbitMQ would close the channel);
//! - a plain ack for each done delivery behind one still running, in the same round:
//!   nothing waits for a long task beside it, and its prefetch slot is freed as before.
//!
//! The sends of a round are awaited one after the other (lapin starts each as a task of
//! its own, so only awaiting keeps them in order); a round costs a few round trips through
//! lapin's command queue, while the next round's requests gather.
//!
//! A delivery the consume loop has not taken yet has a higher tag than every taken one, so
//! a run at the front never covers it. When lapin recovers the channel, its tags start
//! again from 1: a tag not above the last one taken starts a new generation, and the
//! deliveries of the old one are settled each on its own through their own handles, which
//! lapin refuses (their channel is gone, and RabbitMQ delivers them again).

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::DeliveryTag;
use lapin::Acker;
use tokio::sync::{mpsc, oneshot};

/// The acks of one consuming channel: a task of its own, which ends once the channel's
/// [`Acks`] and every [`Taken`] of it are dropped.
pub struct Acks {
    unsettled: Arc<Mutex<Unsettled<Request>>>,
    requests: mpsc::UnboundedSender<Request>,
}

impl Default for Acks {
    fn default() -> Self {
        Self::new()
    }
}

impl Acks {
    /// Start the channel's sender task (on the current Tokio runtime).
    pub fn new() -> Self {
        let unsettled = Arc::new(Mutex::new(Unsettled::default()));
        let (requests, received) = mpsc::unbounded_channel();
        tokio::spawn(send(unsettled.clone(), received));
        Self {
            unsettled,
            requests,
        }
    }

    /// A delivery the consume loop has just taken from this channel's consumer, in the
    /// order the consumer gave them.
    pub fn take(&self, delivery: Delivery) -> Taken {
        // A delivery of a channel that has closed or begun its recovery (lapin has
        // poisoned its handle) belongs to no generation: it never moves the count of tags.
        let generation = if delivery.acker.usable() {
            self.unsettled
                .lock()
                .expect("acks lock")
                .take(delivery.delivery_tag)
        } else {
            VOID
        };
        Taken {
            delivery,
            generation,
            requests: self.requests.clone(),
        }
    }
}

/// The generation of a delivery taken with a poisoned handle: never the current one.
const VOID: u64 = u64::MAX;

/// A delivery taken from a consumer, settled through its channel's [`Acks`].
pub struct Taken {
    delivery: Delivery,
    generation: u64,
    requests: mpsc::UnboundedSender<Request>,
}

impl Deref for Taken {
    type Target = Delivery;

    fn deref(&self) -> &Delivery {
        &self.delivery
    }
}

impl Taken {
    /// Ack the delivery, alone or with others. As [`Acker::ack`]: `Ok(false)` when lapin
    /// sent nothing because the channel had closed (or begun its recovery).
    pub async fn ack(&self) -> lapin::Result<bool> {
        self.settle(Settle::Ack).await
    }

    /// Reject the delivery without requeueing it (to the dead-letter exchange), on its own.
    pub async fn reject(&self) -> lapin::Result<bool> {
        self.settle(Settle::Reject).await
    }

    async fn settle(&self, settle: Settle) -> lapin::Result<bool> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            tag: self.delivery.delivery_tag,
            generation: self.generation,
            settle,
            acker: self.delivery.acker.clone(),
            reply,
        };
        // The task lives as long as a sender does, and this handle holds one: only a bug
        // (a panic in it) ends it early. The session is then rebuilt.
        let stopped =
            || lapin::Error::from(std::io::Error::other("the channel's ack sender stopped"));
        self.requests.send(request).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Reject,
}

struct Request {
    tag: DeliveryTag,
    generation: u64,
    settle: Settle,
    acker: Acker,
    reply: oneshot::Sender<lapin::Result<bool>>,
}

impl Request {
    /// Send this settlement on its own, through the delivery's own handle.
    async fn alone(self) {
        let sent = match self.settle {
            Settle::Ack => self.acker.ack(BasicAckOptions::default()).await,
            Settle::Reject => {
                self.acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
            }
        };
        let _ = self.reply.send(sent);
    }
}

/// The sender task: each round takes every request waiting, then sends what
/// [`Unsettled`] makes of them, in its order.
async fn send(
    unsettled: Arc<Mutex<Unsettled<Request>>>,
    mut received: mpsc::UnboundedReceiver<Request>,
) {
    while let Some(first) = received.recv().await {
        let mut requests = vec![first];
        while let Ok(more) = received.try_recv() {
            requests.push(more);
        }
        let round = {
            let mut unsettled = unsettled.lock().expect("acks lock");
            let mut round = Vec::new();
            for request in requests {
                let asked = (request.tag, request.generation, request.settle);
                round.extend(unsettled.asked(asked, request));
            }
            round.extend(unsettled.due());
            round
        };
        for send in round {
            match send {
                Send::Alone(request) => request.alone().await,
                Send::Together(run) => together(run).await,
                Send::Refused(request) => {
                    tracing::error!(
                        tag = request.tag,
                        "a delivery was asked to be settled twice; nothing sent"
                    );
                    let _ = request.reply.send(Ok(false));
                }
            }
        }
    }
}

/// One ack with `multiple` for a run of done deliveries at the front, answered to each.
async fn together(mut run: Vec<Request>) {
    let last = run.pop().expect("a run is never empty");
    if run.is_empty() {
        return last.alone().await;
    }
    let sent = last.acker.ack(BasicAckOptions { multiple: true }).await;
    tracing::trace!(
        up_to = last.tag,
        deliveries = run.len() + 1,
        "acked together"
    );
    for request in run {
        let _ = request.reply.send(sent.clone());
    }
    let _ = last.reply.send(sent);
}

/// What a round sends, in order.
#[derive(Debug)]
enum Send<R> {
    /// A rejection, a delivery of an old generation, or a done delivery behind one still
    /// running: settled through its own handle.
    Alone(R),
    /// Done deliveries at the front, in tag order: one ack with `multiple` at the last.
    Together(Vec<R>),
    /// A delivery settled already, or never taken: nothing is sent (`Ok(false)`).
    Refused(R),
}

/// The deliveries of the current generation taken and not yet settled, by tag.
#[derive(Debug)]
struct Unsettled<R> {
    generation: u64,
    /// The highest tag taken in this generation.
    last: DeliveryTag,
    /// `None` while the delivery's task runs; its ack once asked for.
    taken: BTreeMap<DeliveryTag, Option<R>>,
}

impl<R> Default for Unsettled<R> {
    fn default() -> Self {
        Self {
            generation: 0,
            last: 0,
            taken: BTreeMap::new(),
        }
    }
}

impl<R> Unsettled<R> {
    /// A delivery taken from the consumer; its generation.
    fn take(&mut self, tag: DeliveryTag) -> u64 {
        if tag <= self.last {
            // The channel was recovered: tags start again. What the old generation took is
            // void on the new channel; its handles are lapin's to refuse.
            self.generation += 1;
            self.taken.clear();
        }
        self.last = tag;
        self.taken.insert(tag, None);
        self.generation
    }

    /// A settlement asked for: kept for [`Self::due`], or what to do with it now (send a
    /// rejection or a delivery of an old generation on its own; refuse a second ask).
    fn asked(&mut self, asked: (DeliveryTag, u64, Settle), request: R) -> Option<Send<R>> {
        let (tag, generation, settle) = asked;
        if generation != self.generation {
            return Some(Send::Alone(request));
        }
        match (self.taken.get_mut(&tag), settle) {
            (Some(slot @ None), Settle::Ack) => {
                *slot = Some(request);
                None
            }
            (Some(None), Settle::Reject) => {
                self.taken.remove(&tag);
                Some(Send::Alone(request))
            }
            // Asked again (its handle may be unused: a `multiple` settled it), or never
            // taken: RabbitMQ would close the channel over a tag settled twice.
            _ => Some(Send::Refused(request)),
        }
    }

    /// The acks asked for and not yet sent: the done run at the front together, then each
    /// done delivery behind a running one on its own. Running deliveries stay.
    fn due(&mut self) -> Vec<Send<R>> {
        let mut front = Vec::new();
        while let Some(entry) = self.taken.first_entry() {
            if entry.get().is_none() {
                break;
            }
            front.extend(entry.remove());
        }
        let (behind, running): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.taken)
            .into_iter()
            .partition(|(_, slot)| slot.is_some());
        self.taken = running;
        let front = (!front.is_empty()).then_some(Send::Together(front));
        front
            .into_iter()
            .chain(behind.into_values().flatten().map(Send::Alone))
            .collect()
    }
}

#[cfg(test)]
#[path = "acks_tests.rs"]
mod tests;
