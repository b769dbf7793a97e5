//! The plan of [`Unsettled`], against a model of what RabbitMQ does with what it receives.

use std::collections::BTreeSet;

use super::*;

/// The channel as RabbitMQ sees it: the deliveries it holds unsettled, and what each
/// settlement did.
#[derive(Default)]
struct Broker {
    unsettled: BTreeSet<DeliveryTag>,
    acked: Vec<DeliveryTag>,
    rejected: Vec<DeliveryTag>,
}

impl Broker {
    fn deliver(&mut self, tag: DeliveryTag) {
        self.unsettled.insert(tag);
    }

    /// Apply one round in order. `running`: the deliveries whose tasks have not ended,
    /// which no ack may settle.
    fn apply(&mut self, round: Vec<Send<(DeliveryTag, Settle)>>, running: &BTreeSet<DeliveryTag>) {
        for send in round {
            let covered: Vec<DeliveryTag> = match &send {
                Send::Alone((tag, _)) => vec![*tag],
                Send::Refused(_) => vec![],
                Send::Together(run) => {
                    let last = run.last().expect("a run is never empty").0;
                    let covered: Vec<_> = self.unsettled.range(..=last).copied().collect();
                    let asked: Vec<_> = run.iter().map(|(tag, _)| *tag).collect();
                    assert!(
                        run.iter().all(|(_, settle)| *settle == Settle::Ack),
                        "a run holds acks only: {asked:?}"
                    );
                    assert_eq!(
                        covered, asked,
                        "a multiple ack settles what was asked, no more"
                    );
                    covered
                }
            };
            for tag in covered {
                assert!(
                    !running.contains(&tag),
                    "{tag} was settled while its task ran"
                );
                assert!(
                    self.unsettled.remove(&tag),
                    "{tag} settled twice (406 from RabbitMQ)"
                );
                match &send {
                    Send::Alone((_, Settle::Reject)) => self.rejected.push(tag),
                    _ => self.acked.push(tag),
                }
            }
        }
    }
}

fn ask(
    unsettled: &mut Unsettled<(DeliveryTag, Settle)>,
    tag: DeliveryTag,
    settle: Settle,
) -> Vec<Send<(DeliveryTag, Settle)>> {
    let generation = unsettled.generation;
    unsettled
        .asked((tag, generation, settle), (tag, settle))
        .into_iter()
        .collect()
}

fn shape(round: &[Send<(DeliveryTag, Settle)>]) -> Vec<String> {
    round
        .iter()
        .map(|send| match send {
            Send::Alone((tag, Settle::Ack)) => format!("ack {tag}"),
            Send::Alone((tag, Settle::Reject)) => format!("reject {tag}"),
            Send::Together(run) => format!("ack up to {} ({})", run.last().unwrap().0, run.len()),
            Send::Refused((tag, _)) => format!("refuse {tag}"),
        })
        .collect()
}

#[test]
fn deliveries_done_in_order_are_acked_with_one_multiple() {
    let mut unsettled = Unsettled::default();
    for tag in 1..=3 {
        unsettled.take(tag);
    }
    for tag in [2, 1, 3] {
        assert!(ask(&mut unsettled, tag, Settle::Ack).is_empty());
    }
    assert_eq!(shape(&unsettled.due()), ["ack up to 3 (3)"]);
    assert!(unsettled.due().is_empty(), "nothing is sent twice");
}

#[test]
fn a_done_delivery_behind_a_running_one_is_acked_alone_at_once() {
    let mut unsettled = Unsettled::default();
    for tag in 1..=4 {
        unsettled.take(tag);
    }
    ask(&mut unsettled, 3, Settle::Ack);
    ask(&mut unsettled, 4, Settle::Ack);
    // 1 and 2 still run: a multiple at 3 or 4 would settle them.
    assert_eq!(shape(&unsettled.due()), ["ack 3", "ack 4"]);
    ask(&mut unsettled, 2, Settle::Ack);
    assert_eq!(shape(&unsettled.due()), ["ack 2"]);
    ask(&mut unsettled, 1, Settle::Ack);
    assert_eq!(shape(&unsettled.due()), ["ack up to 1 (1)"]);
}

#[test]
fn a_rejection_goes_alone_before_a_multiple_that_would_cover_it() {
    let mut unsettled = Unsettled::default();
    for tag in 1..=3 {
        unsettled.take(tag);
    }
    let mut round = ask(&mut unsettled, 1, Settle::Ack);
    round.extend(ask(&mut unsettled, 2, Settle::Reject));
    round.extend(ask(&mut unsettled, 3, Settle::Ack));
    round.extend(unsettled.due());
    assert_eq!(shape(&round), ["reject 2", "ack up to 3 (2)"]);
}

#[test]
fn a_recovered_channel_starts_a_new_generation_whose_acks_never_meet_the_old() {
    let mut unsettled = Unsettled::default();
    let old = unsettled.take(7);
    unsettled.take(8);
    // lapin recovered the channel: its tags start again.
    let new = unsettled.take(1);
    assert_ne!(old, new);
    unsettled.take(2);
    // The old generation's deliveries are settled each through its own (poisoned) handle.
    let alone = unsettled.asked((8, old, Settle::Ack), (8, Settle::Ack));
    assert_eq!(shape(&Vec::from_iter(alone)), ["ack 8"]);
    ask(&mut unsettled, 2, Settle::Ack);
    assert_eq!(
        shape(&unsettled.due()),
        ["ack 2"],
        "1 of the new channel still runs"
    );
}

#[test]
fn a_settlement_asked_twice_or_for_a_tag_never_taken_sends_nothing() {
    let mut unsettled = Unsettled::default();
    for tag in 1..=3 {
        unsettled.take(tag);
    }
    assert_eq!(shape(&ask(&mut unsettled, 5, Settle::Ack)), ["refuse 5"]);
    assert!(ask(&mut unsettled, 1, Settle::Ack).is_empty());
    assert_eq!(shape(&ask(&mut unsettled, 1, Settle::Ack)), ["refuse 1"]);
    assert!(ask(&mut unsettled, 2, Settle::Ack).is_empty());
    assert_eq!(shape(&unsettled.due()), ["ack up to 2 (2)"]);
    // 1's handle is unused (the `multiple` at 2 settled it): a second ask must not send.
    assert_eq!(shape(&ask(&mut unsettled, 1, Settle::Ack)), ["refuse 1"]);
    assert_eq!(shape(&ask(&mut unsettled, 2, Settle::Reject)), ["refuse 2"]);
    assert_eq!(shape(&ask(&mut unsettled, 3, Settle::Reject)), ["reject 3"]);
    assert_eq!(shape(&ask(&mut unsettled, 3, Settle::Ack)), ["refuse 3"]);
}

/// Tasks ending in random orders, settled in rounds of random sizes, with rejections:
/// nothing running is ever settled, nothing twice, everything once in the end. When tasks
/// end mostly in the order they came (short tasks of one kind), the frames sent are far
/// fewer than the deliveries.
#[test]
fn random_orders_never_settle_a_running_delivery() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let (mut deliveries, mut frames) = (0, 0);
    for scenario in 0..1000 {
        // Odd scenarios: any running task may end; even: mostly the oldest.
        let in_order = scenario % 2 == 0;
        let mut unsettled = Unsettled::default();
        let mut broker = Broker::default();
        let mut running = BTreeSet::new();
        let mut next = 1;
        for _ in 0..(1 + random(60)) {
            // The consumer hands over up to 16 (prefetch) at a time.
            while running.len() < 16 && random(3) > 0 {
                unsettled.take(next);
                broker.deliver(next);
                running.insert(next);
                next += 1;
            }
            // Some of the running tasks end and ask in one round.
            let mut round = Vec::new();
            let oldest = if in_order { random(8) as usize } else { 0 };
            let ending: Vec<DeliveryTag> = running
                .iter()
                .copied()
                .enumerate()
                .filter(|(i, _)| *i < oldest || random(if in_order { 20 } else { 4 }) == 0)
                .map(|(_, tag)| tag)
                .collect();
            for tag in ending {
                running.remove(&tag);
                let settle = if random(20) == 0 {
                    Settle::Reject
                } else {
                    Settle::Ack
                };
                round.extend(ask(&mut unsettled, tag, settle));
            }
            round.extend(unsettled.due());
            if in_order {
                frames += round.len();
            }
            broker.apply(round, &running);
        }
        for tag in std::mem::take(&mut running) {
            let mut round = ask(&mut unsettled, tag, Settle::Ack);
            round.extend(unsettled.due());
            broker.apply(round, &running);
        }
        if in_order {
            deliveries += next - 1;
        }
        assert!(
            broker.unsettled.is_empty(),
            "left unsettled: {:?}",
            broker.unsettled
        );
        assert_eq!(
            broker.acked.len() + broker.rejected.len(),
            (next - 1) as usize
        );
    }
    assert!(
        (frames as u64) < deliveries / 2,
        "{frames} frames for {deliveries} deliveries"
    );
}
