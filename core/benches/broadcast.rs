//! One chat message into a room of 1, 100 and 10,000 joined sessions: the room's own work
//! (decode, order, batch, confirm, broadcast) plus handing the shared frame to every
//! recipient, as an adapter does. Criterion reports time per message; throughput is set in
//! recipients, so its "elements/s" figure is deliveries per second (time per recipient is its
//! inverse).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgechat_core::protocol::Frame;
use edgechat_core::room::{ConnId, Output, Room, RoomConfig};
use edgechat_core::Timestamp;

const SENDER: ConnId = ConnId(0);

fn drain(room: &mut Room, outbox: &mut Vec<(ConnId, Frame)>) {
    while let Some(output) = room.poll_output() {
        match output {
            Output::Persist(batch) => room
                .handle_durable(batch.id, Timestamp(1))
                .expect("the batch in flight"),
            Output::Broadcast { recipients, frame } => {
                for conn in recipients.iter() {
                    outbox.push((*conn, frame.clone()));
                }
            }
            Output::AskRateLimiter { request, .. } => {
                room.handle_rate_limit_verdict(request, 0, Timestamp(1))
            }
            _ => {}
        }
    }
}

fn room_of(sessions: u64) -> Room {
    let config = RoomConfig {
        connections_max: 20_000,
        ..RoomConfig::default()
    };
    let mut room = Room::new(config);
    let mut outbox = Vec::new();
    for conn in 0..sessions {
        let conn = ConnId(conn);
        room.handle_connect(conn, "127.0.0.1".parse().unwrap(), Timestamp(1))
            .unwrap();
        room.handle_text(conn, r#"{"name":"user"}"#, Timestamp(1))
            .unwrap();
        drain(&mut room, &mut outbox);
        outbox.clear();
    }
    room
}

fn one_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_message");
    for sessions in [1u64, 100, 10_000] {
        let mut room = room_of(sessions);
        let mut outbox = Vec::with_capacity(sessions as usize);
        let mut now = 2u64;
        group.throughput(Throughput::Elements(sessions));
        group.bench_with_input(BenchmarkId::from_parameter(sessions), &sessions, |b, _| {
            b.iter(|| {
                now += 1;
                room.handle_text(
                    SENDER,
                    black_box(r#"{"message":"hello, room"}"#),
                    Timestamp(now),
                )
                .unwrap();
                drain(&mut room, &mut outbox);
                black_box(outbox.len());
                outbox.clear();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, one_message);
criterion_main!(benches);
