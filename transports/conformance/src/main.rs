//! `edgechat-conformance`: runs the conformance suite against a running edgechat target.
//!
//! Prints one line per case and closes with `N passed, M failed` (`, K skipped` when some
//! cases could not run against this target); exits 1 if any case failed.

use std::process::ExitCode;
use std::time::Duration;

use edgechat_conformance::{cases, run_case, AuthMode, Outcome, Target, CASE_TIMEOUT};

const USAGE: &str = "\
usage: edgechat-conformance --base-url URL [--ip-header NAME] [--admin-token TOKEN]
                            [--hibernate-url URL] [--only NAME] [--timeout SECONDS] [--list]
                            [--auth-mode MODE] [--auth-hs256-secret SECRET]
                            [--allowed-origins ORIGINS] [--auth-token-rooms ROOMS]

  --base-url URL        the target, e.g. http://127.0.0.1:8787
  --ip-header NAME      a client-IP header the target trusts (CF-Connecting-IP on Workers);
                        each connection then claims its own fake IP, so cases don't share
                        rate limiters. Without it, cases that need the real limiter skip.
  --admin-token TOKEN   the admin token (publish endpoint, hibernate URL)
  --hibernate-url URL   POSTing here makes every room hibernate now
  --only NAME           run only the cases whose name contains NAME
  --timeout SECONDS     time limit per case (default 90)
  --list                print the case names and exit
  --auth-mode MODE      the target's identity mode: off (default), optional or required;
                        the auth_* cases expect what it makes of tokens (in required mode
                        the other cases cannot join: run them with --only auth_)
  --auth-hs256-secret SECRET
                        the HS256 secret the target verifies tokens with (the cases sign
                        their own tokens with it)
  --allowed-origins ORIGINS
                        the target's origin allow-list, comma-separated
  --auth-token-rooms ROOMS
                        rooms (names, comma-separated) the target marks token-only";

fn main() -> ExitCode {
    match parse(std::env::args().skip(1).collect()) {
        Ok(Some(args)) => run(args),
        Ok(None) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    target: Target,
    only: Option<String>,
    timeout: Duration,
}

fn parse(argv: Vec<String>) -> Result<Option<Args>, String> {
    let mut base_url = None;
    let mut target = Target::new("");
    let mut only = None;
    let mut timeout = CASE_TIMEOUT;
    let mut argv = argv.into_iter();
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--base-url" => base_url = Some(value()?),
            "--ip-header" => target.client_ip_header = Some(value()?),
            "--admin-token" => target.admin_token = Some(value()?),
            "--hibernate-url" => target.hibernate = Some(value()?),
            "--auth-mode" => {
                let mode = value()?;
                target.auth.mode = AuthMode::from_name(&mode)
                    .ok_or_else(|| format!("--auth-mode {mode:?}: off, optional or required"))?;
            }
            "--auth-hs256-secret" => target.auth.hs256_secret = Some(value()?),
            "--auth-token-rooms" => target.auth.token_rooms = list(&value()?),
            "--allowed-origins" => target.auth.allowed_origins = list(&value()?),
            "--only" => only = Some(value()?),
            "--timeout" => {
                let seconds: u64 = value()?
                    .parse()
                    .map_err(|_| "--timeout takes whole seconds".to_owned())?;
                timeout = Duration::from_secs(seconds);
            }
            "--list" => {
                for case in cases() {
                    println!("{}", case.name);
                }
                return Ok(None);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    target.base_url = base_url.ok_or("--base-url is required")?;
    target.url().map_err(|e| e.to_string())?;
    Ok(Some(Args {
        target,
        only,
        timeout,
    }))
}

fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    runtime.block_on(async {
        for case in cases() {
            if args
                .only
                .as_deref()
                .is_some_and(|only| !case.name.contains(only))
            {
                continue;
            }
            let started = std::time::Instant::now();
            let outcome = run_case(&case, &args.target, args.timeout).await;
            let ms = started.elapsed().as_millis();
            match &outcome {
                Outcome::Passed => passed += 1,
                Outcome::Skipped(_) => skipped += 1,
                Outcome::Failed(_) => failed += 1,
            }
            println!("{} ... {outcome} ({ms} ms)", case.name);
        }
    });
    if skipped > 0 {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A comma-separated flag's entries, trimmed, without empty ones.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect()
}
