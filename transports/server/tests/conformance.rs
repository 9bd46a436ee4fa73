//! The black-box conformance suite (`transports/conformance`) against an in-process server.
//!
//! Each case is its own test with its own server on 127.0.0.1:0 and its own data directory.
//! The server trusts `CF-Connecting-IP` so that every connection of a case claims its own
//! client IP (the real limiter, default settings, applies to each), and has an admin token
//! for publishing and forced hibernation. One more test runs every case against a server
//! that hibernates rooms after 25 ms of idleness, so evictions also happen mid-case, and one
//! more against a server that writes each room turn through io_uring (`--io-uring`).
//!
//! The identity cases (`auth_*`) run once per auth mode (`auth_cases_mode_*`), each against a
//! server configured that way: an HS256 secret, a token-free default, and an origin
//! allow-list in optional mode.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgechat_conformance::{cases, run_case, AuthMode, AuthSetup, Outcome, Target};
use edgechat_core::auth::{AuthConfig, TokenVerifier, VerifyingKeys};
use edgechat_core::ids::{Namespace, ObjectId};
use edgechat_server::{Config, Server};

const ADMIN_TOKEN: &str = "conformance-admin-token";
const IP_HEADER: &str = "CF-Connecting-IP";
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// The HS256 secret of the servers with auth on (the cases sign their tokens with it).
const AUTH_SECRET: &str = "the conformance secret, 32 bytes or more";
/// The allow-list of the optional-mode server.
const ALLOWED_ORIGIN: &str = "https://chat.example";
/// The token-only room of the optional-mode server.
const TOKEN_ROOM: &str = "auth-token-only";

/// A data directory removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> DataDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "edgechat-conformance-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating a temporary data directory");
        DataDir(path)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(idle_ms: Option<u64>) -> (Server, Target, DataDir) {
    start_with(idle_ms, AuthSetup::default()).await
}

/// A server configured as `auth` says (the core's policy with the default leeway).
async fn start_with(idle_ms: Option<u64>, auth: AuthSetup) -> (Server, Target, DataDir) {
    start_configured(idle_ms, auth, false).await
}

/// As [`start_with`], with a turn's socket writes batched through io_uring or not.
async fn start_configured(
    idle_ms: Option<u64>,
    auth: AuthSetup,
    io_uring: bool,
) -> (Server, Target, DataDir) {
    let dir = DataDir::new();
    let mode = match auth.mode {
        AuthMode::Off => edgechat_core::auth::AuthMode::Off,
        AuthMode::Optional => edgechat_core::auth::AuthMode::Optional,
        AuthMode::Required => edgechat_core::auth::AuthMode::Required,
    };
    let verifier = auth.hs256_secret.as_ref().map(|secret| {
        TokenVerifier::new(VerifyingKeys::hs256(secret.as_bytes()).expect("a valid secret"))
    });
    let token_rooms: Vec<ObjectId> = auth
        .token_rooms
        .iter()
        .map(|room| ObjectId::from_name(Namespace::Room, room))
        .collect();
    let mut config = Config {
        auth: AuthConfig::new(mode, verifier, token_rooms).expect("a valid policy"),
        allowed_origins: auth.allowed_origins.clone(),
        data_path: dir.0.join("db"),
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        trust_proxy_header: Some(IP_HEADER.into()),
        admin_token: Some(ADMIN_TOKEN.into()),
        io_uring,
        ..Config::default()
    };
    if let Some(idle_ms) = idle_ms {
        config.idle_ms = idle_ms;
    }
    let server = Server::start(config).await.expect("the server starts");
    let addr = server.local_addr();
    let target = Target {
        base_url: format!("http://{addr}"),
        client_ip_header: Some(IP_HEADER.into()),
        admin_token: Some(ADMIN_TOKEN.into()),
        hibernate: Some(format!("http://{addr}/admin/hibernate")),
        auth,
    };
    (server, target, dir)
}

/// Runs the case called `name` against a fresh server; panics with the case's failure.
async fn run_named(name: &str) {
    let case = cases()
        .into_iter()
        .find(|case| case.name == name)
        .unwrap_or_else(|| panic!("no conformance case called {name}"));
    let (server, target, _dir) = start(None).await;
    let outcome = run_case(&case, &target, CASE_TIMEOUT).await;
    server.shutdown().await;
    match outcome {
        Outcome::Passed => {}
        Outcome::Skipped(why) => {
            panic!("{name} skipped, but this target is fully configured: {why}")
        }
        Outcome::Failed(why) => panic!("{name} failed: {why}"),
    }
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run_named(stringify!($name)).await;
            }
        )*

        const TESTED: &[&str] = &[$(stringify!($name)),*];
    };
}

conformance_tests!(
    page_is_html,
    page_files_and_policy,
    create_room_mints_private_id,
    room_route_other_methods_405,
    websocket_route_without_upgrade_400,
    unknown_paths_404,
    room_name_length_limit,
    forged_private_id_refused,
    uppercase_private_id_is_a_long_name,
    private_room_create_and_join,
    room_names_are_case_sensitive,
    nothing_before_first_frame,
    join_sequence,
    broadcast_reaches_everyone_in_order,
    anonymous_default_name,
    name_length_limit,
    message_length_limit,
    malformed_frames_get_short_errors,
    binary_frames_get_short_errors,
    quit_when_joined_socket_closes,
    close_handshake_completed,
    rate_limit_rapid_frames,
    frames_sent_back_to_back_within_the_burst_are_all_accepted,
    rate_limit_shared_across_rooms_and_connections,
    history_replays_newest_100,
    since_resumes_exactly,
    since_in_future_falls_back,
    since_too_old_falls_back,
    hibernation_changes_nothing,
    hibernation_keeps_unnamed_socket_join_sequence,
    hibernation_keeps_rate_limits,
    history_endpoint_pages,
    presence_endpoint,
    publish_refused_without_token,
    publish_with_token,
    counter,
    health_and_metrics,
    answer_bodies_and_content_types_are_exact,
    history_next_before_reaches_the_oldest,
    publish_unauthorized_is_exact,
    publish_answers_are_exact,
    admin_hibernate_other_methods_405,
    admin_hibernate_refused_without_token,
    counter_named_like_an_operation,
    client_ip_is_the_first_header_entry,
    moderate_refused_without_token,
    moderate_bad_requests_are_explained,
    moderate_delete_erases_the_text_everywhere,
    moderate_edit_replaces_the_text_in_place,
    moderate_kick_closes_4010,
    moderate_ban_closes_and_keeps_out,
    moderate_ban_ip_refuses_connections,
    moderate_mute_makes_read_only,
    moderate_settings_topic_read_only_members,
    moderate_admin_views,
    resend_with_key_is_stored_once,
    resend_keys_are_per_sender,
    resend_bad_keys_are_refused,
    resend_of_a_deleted_message_is_refused,
);

/// Runs every `auth_*` case against a server configured as `auth`; fails on any failure, and
/// unless at least `passed_min` cases passed (the others skip: not for this mode).
async fn run_auth_cases(auth: AuthSetup, passed_min: usize) {
    let (server, target, _dir) = start_with(None, auth).await;
    let (mut passed, mut failures) = (0, Vec::new());
    for case in cases().iter().filter(|case| case.name.starts_with("auth_")) {
        let outcome = run_case(case, &target, CASE_TIMEOUT).await;
        println!("{} ... {outcome}", case.name);
        match outcome {
            Outcome::Passed => passed += 1,
            Outcome::Skipped(_) => {}
            Outcome::Failed(why) => failures.push(format!("{}: {why}", case.name)),
        }
    }
    server.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(passed >= passed_min, "only {passed} auth cases passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_cases_mode_off() {
    // Tokens are ignored, whatever signs them; no allow-list.
    run_auth_cases(AuthSetup::default(), 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_cases_mode_optional() {
    let auth = AuthSetup {
        mode: AuthMode::Optional,
        hs256_secret: Some(AUTH_SECRET.into()),
        allowed_origins: vec![ALLOWED_ORIGIN.into()],
        token_rooms: vec![TOKEN_ROOM.into()],
    };
    run_auth_cases(auth, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_cases_mode_required() {
    let auth = AuthSetup {
        mode: AuthMode::Required,
        hs256_secret: Some(AUTH_SECRET.into()),
        allowed_origins: Vec::new(),
        token_rooms: Vec::new(),
    };
    run_auth_cases(auth, 11).await;
}

#[test]
fn every_case_has_a_test() {
    // The auth cases run per mode, in the tests above.
    let all: Vec<&str> = cases()
        .iter()
        .map(|case| case.name)
        .filter(|name| !name.starts_with("auth_"))
        .collect();
    let missing: Vec<&&str> = all.iter().filter(|name| !TESTED.contains(name)).collect();
    assert!(
        missing.is_empty(),
        "add these cases to conformance_tests!: {missing:?}"
    );
}

/// Runs every case against one server; fails listing every failure, headed by `setting`.
async fn run_every_case(server: Server, target: Target, setting: &str) {
    let mut failures = Vec::new();
    for case in cases() {
        let outcome = run_case(&case, &target, CASE_TIMEOUT).await;
        println!("{} ... {outcome}", case.name);
        if let Outcome::Failed(why) = outcome {
            failures.push(format!("{}: {why}", case.name));
        }
    }
    server.shutdown().await;
    assert!(failures.is_empty(), "{setting}:\n{}", failures.join("\n"));
}

/// Every case again, against a server that evicts rooms after 25 ms without traffic: the
/// same answers must come whether or not a room was rebuilt between two frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_under_constant_hibernation() {
    let (server, target, _dir) = start(Some(25)).await;
    run_every_case(server, target, "with 25 ms idle hibernation").await;
}

/// Every case again, against a server that submits each room turn's socket writes to
/// io_uring together (`--io-uring`): the same answers, written the other way. Where the
/// kernel refuses io_uring the server writes one socket at a time and this repeats the suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_with_io_uring_writes() {
    let (server, target, _dir) = start_configured(None, AuthSetup::default(), true).await;
    run_every_case(server, target, "with io_uring writes").await;
}
