//! The seed sweeper: runs many seeds in parallel threads, each in its own madsim runtime.
//!
//! ```text
//! cargo run -p sim --release -- --seeds 0..100000 [--threads N] [--max-secs S] [--bug NAME]
//! cargo run -p sim --release -- --seed 42 [--bug NAME] [--trace]
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sim::{parse_bug, parse_host_bug, run_seed, RunReport, SimOptions};

#[derive(Debug)]
struct Args {
    seeds: std::ops::Range<u64>,
    threads: usize,
    max_secs: Option<u64>,
    options: SimOptions,
    single: bool,
    /// Run as a child of the sweeper: print machine-readable totals.
    machine: bool,
}

/// Seeds per child process: a madsim runtime leaves some memory behind when dropped, so a
/// long sweep runs its seeds in fresh processes of this many seeds each.
const CHUNK_SEEDS: u64 = 2_000;

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 0..1_000,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        max_secs: None,
        options: SimOptions::default(),
        single: false,
        machine: false,
    };
    if let Some(seed) = sim::seed_from_env() {
        args.seeds = seed..seed + 1;
        args.single = true;
    }
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => {
                let v = value()?;
                let (a, b) = v.split_once("..").ok_or("--seeds takes A..B")?;
                args.seeds =
                    a.parse().map_err(|_| "bad seed")?..b.parse().map_err(|_| "bad seed")?;
            }
            "--seed" => {
                let seed: u64 = value()?.parse().map_err(|_| "bad seed")?;
                args.seeds = seed..seed + 1;
                args.single = true;
            }
            "--threads" => args.threads = value()?.parse().map_err(|_| "bad thread count")?,
            "--max-secs" => args.max_secs = Some(value()?.parse().map_err(|_| "bad seconds")?),
            "--bug" => {
                let name = value()?;
                match (parse_bug(&name), parse_host_bug(&name)) {
                    (Some(bug), _) => args.options.planted = Some(bug),
                    (None, Some(bug)) => args.options.host_bug = Some(bug),
                    (None, None) => return Err(format!("no bug {name}")),
                }
            }
            "--trace" => args.options.keep_trace = true,
            "--machine" => args.machine = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    if args.single {
        let report = run_seed(args.seeds.start, &args.options);
        if args.options.keep_trace {
            for line in &report.trace {
                println!("{line}");
            }
        }
        println!("seed {} scenario {:?}", report.seed, report.scenario);
        println!("trace hash {:016x}", report.trace_hash);
        println!("faults {:?}", report.faults);
        return match &report.violation {
            None => {
                println!("ok: {} messages durable", report.messages_durable);
                ExitCode::SUCCESS
            }
            Some(violation) => {
                println!("VIOLATION {violation}");
                println!("replay: {}", report.replay_command(args.options.planted));
                ExitCode::FAILURE
            }
        };
    }
    if args.machine || args.seeds.end - args.seeds.start <= CHUNK_SEEDS {
        return sweep(args);
    }
    sweep_in_children(args)
}

/// Runs the sweep in child processes of [`CHUNK_SEEDS`] seeds and adds up their totals.
fn sweep_in_children(args: Args) -> ExitCode {
    let started = Instant::now();
    let exe = std::env::current_exe().expect("own path");
    let mut t = Totals::default();
    let mut failures: Vec<String> = Vec::new();
    let mut start = args.seeds.start;
    println!(
        "sweeping seeds {}..{} on {} threads in chunks of {CHUNK_SEEDS}{}",
        args.seeds.start,
        args.seeds.end,
        args.threads,
        args.max_secs
            .map_or(String::new(), |s| format!(", at most {s} s"))
    );
    while start < args.seeds.end {
        let elapsed = started.elapsed().as_secs();
        if args.max_secs.is_some_and(|s| elapsed >= s) {
            break;
        }
        let end = (start + CHUNK_SEEDS).min(args.seeds.end);
        let mut command = std::process::Command::new(&exe);
        command
            .args(["--seeds", &format!("{start}..{end}"), "--machine"])
            .args(["--threads", &args.threads.to_string()])
            .env_remove("SIM_SEED")
            .env_remove("MADSIM_TEST_SEED");
        if let Some(s) = args.max_secs {
            command.args(["--max-secs", &(s - elapsed).to_string()]);
        }
        if let Some(bug) = args.options.planted {
            command.args(["--bug", &format!("{bug:?}")]);
        }
        if let Some(bug) = args.options.host_bug {
            command.args(["--bug", &format!("{bug:?}")]);
        }
        let output = command.output().expect("child sweep");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("SEEDS"), Some(n), _) => t.seeds += n.parse::<u64>().unwrap_or(0),
                (Some("MESSAGES"), Some(n), _) => t.messages += n.parse::<u64>().unwrap_or(0),
                (Some("FAULT"), Some(kind), Some(n)) => {
                    let kind: &'static str = Box::leak(kind.to_owned().into_boxed_str());
                    *t.faults.entry(kind).or_default() += n.parse::<u64>().unwrap_or(0);
                }
                (Some("FAIL"), _, _) => failures.push(line[5..].to_owned()),
                _ => {}
            }
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{} seeds in {secs:.0} s ({:.1} seeds/s), {} failures",
            t.seeds,
            t.seeds as f64 / secs,
            failures.len()
        );
        start = end;
    }
    let secs = started.elapsed().as_secs_f64();
    t.print_summary(secs);
    println!("failures: {}", failures.len());
    for failure in &failures {
        println!("  {failure}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    messages: u64,
    faults: BTreeMap<&'static str, u64>,
    failures: Vec<RunReport>,
}

impl Totals {
    /// Seeds per second, durable messages and faults by kind (failures are listed by the
    /// caller, which knows their form).
    fn print_summary(&self, secs: f64) {
        println!(
            "seeds run: {} in {secs:.1} s = {:.1} seeds/s",
            self.seeds,
            self.seeds as f64 / secs
        );
        println!("durable messages: {}", self.messages);
        println!("faults injected by kind:");
        for (kind, n) in &self.faults {
            println!("  {kind:<18} {n}");
        }
    }
}

fn sweep(args: Args) -> ExitCode {
    let next = Arc::new(AtomicU64::new(args.seeds.start));
    let stop = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Mutex::new(Totals::default()));
    let started = Instant::now();
    if !args.machine {
        println!(
            "sweeping seeds {}..{} on {} threads{}",
            args.seeds.start,
            args.seeds.end,
            args.threads,
            args.max_secs
                .map_or(String::new(), |s| format!(", at most {s} s"))
        );
    }
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (next, stop, totals) = (next.clone(), stop.clone(), totals.clone());
            let (end, options, max_secs) = (args.seeds.end, args.options.clone(), args.max_secs);
            let args_machine = args.machine;
            std::thread::spawn(move || loop {
                if stop.load(Ordering::Relaxed)
                    || max_secs.is_some_and(|s| started.elapsed().as_secs() >= s)
                {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let report = run_seed(seed, &options);
                let mut t = totals.lock().expect("totals");
                t.seeds += 1;
                t.messages += report.messages_durable;
                for (kind, n) in &report.faults {
                    *t.faults.entry(kind).or_default() += n;
                }
                if let Some(v) = &report.violation {
                    eprintln!("seed {seed} FAILED: {v}");
                    eprintln!("  replay: {}", report.replay_command(options.planted));
                    t.failures.push(report);
                }
                if t.seeds % 1_000 == 0 && !args_machine {
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "{} seeds in {secs:.0} s ({:.1} seeds/s), {} failures",
                        t.seeds,
                        t.seeds as f64 / secs,
                        t.failures.len()
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let secs = started.elapsed().as_secs_f64();
    let mut t = totals.lock().expect("totals");
    t.failures.sort_by_key(|r| r.seed);
    if args.machine {
        println!("SEEDS {}", t.seeds);
        println!("MESSAGES {}", t.messages);
        for (kind, n) in &t.faults {
            println!("FAULT {kind} {n}");
        }
        for report in &t.failures {
            let v = report.violation.as_ref().expect("failure");
            println!(
                "FAIL seed {}: {v} -- replay: {}",
                report.seed,
                report.replay_command(args.options.planted)
            );
        }
        return ExitCode::SUCCESS;
    }
    t.print_summary(secs);
    println!("failures: {}", t.failures.len());
    for report in &t.failures {
        let v = report.violation.as_ref().expect("failure");
        println!("  seed {}: {v}", report.seed);
        println!(
            "    replay: {}",
            report.replay_command(args.options.planted)
        );
    }
    if t.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
