//! The room client against a real edgechat server on 127.0.0.1: in this process (the server
//! library), or, where the server must die, in a child process killed with SIGKILL and
//! started again on the same data file and port.
//!
//! The child is this test binary run again with `EDGECHAT_CHILD_*` set: the test
//! `child_server` then serves until killed (and passes at once when not a child).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgechat_client::http::HttpClient;
use edgechat_client::{connect, ConnectOptions, Error, Event, Events, Room, State};
use edgechat_core::limiter::RateLimiterConfig;
use edgechat_core::room::RoomConfig;
use edgechat_server::{Config, Server};

mod common;

use common::{config, options, until, DataDir, ADMIN_TOKEN, WAIT};

async fn start(config: Config) -> (Server, String) {
    let server = Server::start(config).await.expect("the server starts");
    let url = format!("http://{}", server.local_addr());
    (server, url)
}

async fn ready(events: &mut Events) -> Option<bool> {
    until(events, "ready", |event| match event {
        Event::Ready { recovered, .. } => Some(*recovered),
        _ => None,
    })
    .await
}

async fn publish_many(http: &HttpClient, room: &str, count: u64) {
    for n in 1..=count {
        let id = http
            .publish(room, ADMIN_TOKEN, "bot", &format!("m{n}"))
            .await
            .expect("publish");
        assert_eq!(id, n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_receive_roster_and_presence() {
    let dir = DataDir::new("basic");
    let (server, url) = start(config(&dir.db(), "127.0.0.1:0".parse().unwrap())).await;

    let (ada, mut ada_events) = connect(options(&url, "lobby", "ada")).unwrap();
    assert_eq!(ready(&mut ada_events).await, None);
    assert_eq!(ada.state(), State::Live);
    let (bob, mut bob_events) = connect(options(&url, "lobby", "bob")).unwrap();
    ready(&mut bob_events).await;
    until(&mut ada_events, "bob's join", |e| {
        matches!(e, Event::Join { name } if name == "bob").then_some(())
    })
    .await;
    assert_eq!(ada.roster(), ["ada", "bob"]);

    let id = ada.send("hello").await.expect("acknowledged");
    assert_eq!(id, 1);
    let seen = until(&mut bob_events, "ada's message", |e| match e {
        Event::Message(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (seen.id, seen.name.as_str(), seen.message.as_str()),
        (Some(1), "ada", "hello")
    );
    assert_eq!(bob.send("hi ada").await.unwrap(), 2);
    let mut presence = ada.presence().await.unwrap();
    presence.sort();
    assert_eq!(presence, ["ada", "bob"]);

    // The server's refusal comes back as the send's error, in its words.
    let refused = ada.send("x".repeat(300)).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Server(text) if text == "Message too long."),
        "{refused}"
    );
    // The queue goes on after a refusal.
    assert_eq!(ada.send("after").await.unwrap(), 3);

    bob.close().await;
    until(&mut ada_events, "bob's quit", |e| {
        matches!(e, Event::Quit { name } if name == "bob").then_some(())
    })
    .await;
    assert_eq!(ada.roster(), ["ada"]);
    assert_eq!(bob.state(), State::Closed);
    assert!(matches!(bob.send("late").await, Err(Error::Closed(_))));
    ada.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_join_is_fatal() {
    let dir = DataDir::new("fatal");
    let (server, url) = start(config(&dir.db(), "127.0.0.1:0".parse().unwrap())).await;
    let (room, mut events) = connect(options(&url, "lobby", &"n".repeat(33))).unwrap();
    let message = until(&mut events, "the fatal error", |e| match e {
        Event::Error {
            message,
            fatal: true,
        } => Some(message.clone()),
        _ => None,
    })
    .await;
    assert_eq!(message, "Name too long.");
    until(&mut events, "closed", |e| {
        matches!(
            e,
            Event::State {
                state: State::Closed,
                ..
            }
        )
        .then_some(())
    })
    .await;
    assert_eq!(room.state(), State::Closed);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_paging_goes_back_to_the_oldest() {
    let dir = DataDir::new("paging");
    let (server, url) = start(config(&dir.db(), "127.0.0.1:0".parse().unwrap())).await;
    let http = HttpClient::new(&url, None).unwrap();
    publish_many(&http, "books", 250).await;

    let (room, mut events) = connect(options(&url, "books", "reader")).unwrap();
    let mut replayed = Vec::new();
    until(&mut events, "ready", |e| match e {
        Event::Message(m) => {
            replayed.push(m.id.unwrap());
            None
        }
        Event::Ready { .. } => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(replayed, (151..=250).collect::<Vec<_>>());

    let mut older = Vec::new();
    let mut pages = 0;
    loop {
        let page = room.load_older(60).await.unwrap();
        pages += 1;
        let ids: Vec<u64> = page.messages.iter().map(|m| m.id.unwrap()).collect();
        // Each page oldest first, and each page older than the one before.
        assert!(ids.windows(2).all(|w| w[0] + 1 == w[1]), "{ids:?}");
        older.splice(0..0, ids);
        if !page.has_more {
            break;
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(older, (1..=150).collect::<Vec<_>>());
    let after_end = room.load_older(60).await.unwrap();
    assert!(after_end.messages.is_empty() && !after_end.has_more);
    room.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_false_when_the_gap_exceeds_retained_history() {
    let dir = DataDir::new("gap");
    let mut config = config(&dir.db(), "127.0.0.1:0".parse().unwrap());
    config.room = RoomConfig {
        history_retained_max: 10,
        ..RoomConfig::default()
    };
    let (server, url) = start(config).await;
    let http = HttpClient::new(&url, None).unwrap();
    publish_many(&http, "gap", 30).await;

    // Resuming inside the retained history: recovered, exactly what came after.
    let (near, mut near_events) = connect(ConnectOptions {
        since: Some(25),
        ..options(&url, "gap", "near")
    })
    .unwrap();
    let mut ids = Vec::new();
    let recovered = until(&mut near_events, "ready", |e| match e {
        Event::Message(m) => {
            ids.push(m.id.unwrap());
            None
        }
        Event::Ready { recovered, .. } => Some(*recovered),
        _ => None,
    })
    .await;
    assert_eq!((recovered, ids), (Some(true), vec![26, 27, 28, 29, 30]));

    // Resuming before it: the gap is surfaced, never hidden, then the newest come.
    let (far, mut far_events) = connect(ConnectOptions {
        since: Some(5),
        ..options(&url, "gap", "far")
    })
    .unwrap();
    let mut gap = None;
    let mut ids = Vec::new();
    let recovered = until(&mut far_events, "ready", |e| match e {
        Event::Gap { since } => {
            gap = Some(*since);
            None
        }
        Event::Message(m) => {
            ids.push(m.id.unwrap());
            None
        }
        Event::Ready { recovered, .. } => Some(*recovered),
        _ => None,
    })
    .await;
    assert_eq!(recovered, Some(false));
    assert_eq!(gap, Some(5));
    assert_eq!(far.recovered(), Some(false));
    assert_eq!(ids, (21..=30).collect::<Vec<_>>());
    near.close().await;
    far.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_send_is_retried_not_lost() {
    let dir = DataDir::new("limit");
    let mut config = config(&dir.db(), "127.0.0.1:0".parse().unwrap());
    // The real limiter with a shorter cost: a burst of about five, then one per 300 ms.
    config.rate_limit = RateLimiterConfig {
        cost_ms: 300,
        grace_ms: 1_200,
    };
    let (server, url) = start(config).await;
    let (room, mut events) = connect(ConnectOptions {
        rate_limit_cost: Duration::from_millis(300),
        ..options(&url, "limits", "eager")
    })
    .unwrap();
    ready(&mut events).await;
    let sends: Vec<_> = (1..=12).map(|n| room.send(format!("burst {n}"))).collect();
    let ids: Vec<u64> = futures_util_join_all(sends).await;
    assert_eq!(ids, (1..=12).collect::<Vec<_>>());
    let mut limited = 0;
    let mut delivered = Vec::new();
    while let Some(event) = events.try_next() {
        match event {
            Event::RateLimited { message, .. } => {
                assert_eq!(message, edgechat_client::ERROR_RATE_LIMITED);
                limited += 1;
            }
            Event::Message(m) => delivered.push(m.message),
            _ => {}
        }
    }
    assert!(limited > 0, "twelve sends at once must meet the limiter");
    let expected: Vec<String> = (1..=12).map(|n| format!("burst {n}")).collect();
    assert_eq!(delivered, expected);
    room.close().await;
    server.shutdown().await;
}

/// Awaits every send in order (they are queued in this order, so they resolve in it).
async fn futures_util_join_all<F>(sends: Vec<F>) -> Vec<u64>
where
    F: std::future::Future<Output = edgechat_client::Result<u64>>,
{
    let mut ids = Vec::new();
    let sends: Vec<_> = sends.into_iter().map(Box::pin).collect();
    for send in sends {
        ids.push(
            tokio::time::timeout(WAIT, send)
                .await
                .expect("acknowledged in time")
                .expect("acknowledged"),
        );
    }
    ids
}

/// A child process, killed when dropped (so that a failing test leaves none behind).
struct ChildServer(Child);

impl ChildServer {
    fn kill_9(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reaped");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server in a child process on `addr` and `db`, ready to answer.
async fn spawn_child(addr: SocketAddr, db: &Path) -> ChildServer {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["child_server", "--exact", "--nocapture", "--test-threads=1"])
        .env("EDGECHAT_CHILD_ADDR", addr.to_string())
        .env("EDGECHAT_CHILD_DB", db)
        .stdout(Stdio::null())
        // The child exits when this pipe closes: a parent that dies takes it along.
        .stdin(Stdio::piped())
        .spawn()
        .expect("the child server starts");
    let child = ChildServer(child);
    let http = HttpClient::new(&format!("http://{addr}"), None).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(response) = http.get("/healthz").await {
            if response.status == 200 {
                return child;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child server never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Not a test on its own: the server of [`spawn_child`], when run as the child.
#[test]
fn child_server() {
    let (Ok(addr), Ok(db)) = (
        std::env::var("EDGECHAT_CHILD_ADDR"),
        std::env::var("EDGECHAT_CHILD_DB"),
    ) else {
        return;
    };
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let _server = Server::start(config(Path::new(&db), addr.parse().unwrap()))
            .await
            .expect("the child server starts");
        std::future::pending::<()>().await;
    });
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The highest id delivered so far and how many times the connection was lost.
type Progress = tokio::sync::watch::Receiver<(u64, u32)>;

/// Collects every message `events` delivers, reporting [`Progress`] as it goes.
fn collect(mut events: Events) -> (tokio::task::JoinHandle<Vec<(u64, String)>>, Progress) {
    let (progress, watch) = tokio::sync::watch::channel((0, 0));
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = events.next().await {
            match event {
                Event::Message(m) => {
                    let id = m.id.expect("the server sends ids");
                    seen.push((id, m.message));
                    progress.send_modify(|(last, _)| *last = id);
                }
                Event::State {
                    state: State::Reconnecting,
                    ..
                } => progress.send_modify(|(_, drops)| *drops += 1),
                _ => {}
            }
        }
        seen
    });
    (task, watch)
}

async fn wait_for(watch: &mut Progress, what: &str, done: impl Fn(&(u64, u32)) -> bool) {
    tokio::time::timeout(WAIT, watch.wait_for(|value| done(value)))
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        .expect("the collector runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_duplicates_nothing() {
    const SENDS: usize = 120;
    let dir = DataDir::new("kill");
    let addr = free_port();
    let mut child = spawn_child(addr, &dir.db()).await;
    let url = format!("http://{addr}");

    let (writer, mut writer_events) = connect(options(&url, "crash", "writer")).unwrap();
    let (reader, mut reader_events) = connect(options(&url, "crash", "reader")).unwrap();
    ready(&mut writer_events).await;
    ready(&mut reader_events).await;
    let (writer_log, mut writer_progress) = collect(writer_events);
    let (reader_log, mut reader_progress) = collect(reader_events);

    // A stream of sends, up to eight queued ahead of the acknowledgements.
    let sender = {
        let writer: Room = writer.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut pending = std::collections::VecDeque::new();
            for n in 0..SENDS {
                let writer = writer.clone();
                pending.push_back(tokio::spawn(
                    async move { writer.send(format!("m{n}")).await },
                ));
                if pending.len() >= 8 {
                    acked.push(pending.pop_front().unwrap().await.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for send in pending {
                acked.push(send.await.unwrap());
            }
            acked
        })
    };

    // Kill the server (no flush, no close frames) once some sends are through; twice.
    for round in 0..2u32 {
        let threshold = 30 + u64::from(round) * 40;
        wait_for(&mut reader_progress, "progress", |(last, _)| {
            *last >= threshold
        })
        .await;
        child.kill_9();
        wait_for(&mut writer_progress, "the drop", |(_, drops)| {
            *drops > round
        })
        .await;
        child = spawn_child(addr, &dir.db()).await;
    }

    let acked: Vec<u64> = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("every send settles")
        .unwrap()
        .into_iter()
        .map(|result| result.expect("every send is acknowledged"))
        .collect();
    let distinct: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(distinct.len(), SENDS, "each send has its own id: {acked:?}");
    let last = *distinct.last().unwrap();

    // The history holds exactly the sends, each once: nothing was stored twice.
    let http = HttpClient::new(&url, None).unwrap();
    let mut stored = Vec::new();
    let mut before = None;
    loop {
        let page = http.history("crash", before, 100).await.unwrap();
        stored.extend(
            page.messages
                .iter()
                .map(|m| (m.id.unwrap(), m.message.clone())),
        );
        match page.next_before {
            Some(id) => before = Some(id),
            None => break,
        }
    }
    stored.reverse();
    let texts: BTreeSet<&str> = stored.iter().map(|(_, text)| text.as_str()).collect();
    assert_eq!(
        (stored.len(), texts.len()),
        (SENDS, SENDS),
        "stored: {stored:?}"
    );
    assert_eq!(last, SENDS as u64);
    for (id, text) in &stored {
        assert!(
            distinct.contains(id),
            "{id} {text:?} stored but never acknowledged"
        );
    }

    // Both clients delivered every message exactly once, in id order, across two kills.
    wait_for(&mut reader_progress, "the last message", |(id, _)| {
        *id >= last
    })
    .await;
    wait_for(&mut writer_progress, "the last message", |(id, _)| {
        *id >= last
    })
    .await;
    assert!(reader_progress.borrow().1 >= 2 && writer_progress.borrow().1 >= 2);
    writer.close().await;
    reader.close().await;
    drop((writer, reader));
    for (who, log) in [("reader", reader_log), ("writer", writer_log)] {
        let seen = log.await.unwrap();
        assert_eq!(
            seen, stored,
            "{who} delivered something other than the history"
        );
    }
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_edits_and_the_topic_arrive_as_events_live_and_on_resume() {
    use edgechat_core::moderation::decode_action;
    let dir = DataDir::new("moderated");
    let (server, url) = start(config(&dir.db(), "127.0.0.1:0".parse().unwrap())).await;
    let admin = server.handle();
    let moderate = |json: &str| {
        let admin = admin.clone();
        let action = decode_action(json).unwrap();
        async move { admin.moderate("mod", action).await.unwrap() }
    };
    let (ada, mut events) = connect(options(&url, "mod", "ada")).unwrap();
    ready(&mut events).await;
    let first = ada.send("tpyo").await.unwrap();
    let second = ada.send("regret").await.unwrap();
    moderate(&format!(r#"{{"edit":{first},"message":"typo"}}"#)).await;
    moderate(&format!(r#"{{"delete":{second}}}"#)).await;
    moderate(r#"{"settings":{"topic":"Be kind"}}"#).await;
    let mut seen = Vec::new();
    for wanted in [
        Event::Edited {
            id: first,
            message: "typo".into(),
        },
        Event::Deleted { id: second },
        Event::Topic {
            topic: "Be kind".into(),
        },
    ] {
        common::until_logged(&mut events, &mut seen, "a change", |e| {
            (*e == wanted).then_some(())
        })
        .await;
    }
    // The change records count as ids: the last id is the deletion's, not a message's.
    assert_eq!(ada.last_id(), second + 2);
    ada.close().await;

    // A new client sees the current state: the edited text in place, the tombstone.
    let (late, mut late_events) = connect(options(&url, "mod", "late")).unwrap();
    let mut replay = Vec::new();
    common::until_logged(&mut late_events, &mut replay, "ready", |e| {
        matches!(e, Event::Ready { .. }).then_some(())
    })
    .await;
    assert!(replay.iter().any(|e| matches!(e,
        Event::Message(m) if m.id == Some(first) && m.message == "typo" && m.edited)));
    assert!(replay.contains(&Event::Deleted { id: second }));
    assert!(replay.contains(&Event::Topic {
        topic: "Be kind".into()
    }));
    assert!(!replay
        .iter()
        .any(|e| matches!(e, Event::Message(m) if m.message == "regret")));
    late.close().await;
    server.shutdown().await;
}
