//! The simulator's CI tests: a fixed seed range, determinism, replay, and its teeth.

use edgechat_core::planted::PlantedBug;
use sim::{find_violation, run_seed, seed_from_env, HostBug, RunReport, SimOptions};

/// Seeds every `cargo test -p sim` runs (about two minutes of debug build on 2 cores, other builds aside).
const CI_SEEDS: std::ops::Range<u64> = 0..2_500;
/// At most this many seeds are tried to catch each planted bug.
const PLANTED_SEEDS_MAX: u64 = 120;

fn fail(report: &RunReport, planted: Option<PlantedBug>) -> ! {
    for line in report.trace.iter().rev().take(40).rev() {
        eprintln!("  {line}");
    }
    panic!(
        "seed {} broke an invariant: {}\nscenario: {:?}\nreplay: {}",
        report.seed,
        report.violation.as_ref().expect("a violation"),
        report.scenario,
        report.replay_command(planted)
    );
}

#[test]
fn seeds_hold_every_invariant() {
    let options = SimOptions::default();
    let seeds = match seed_from_env() {
        Some(seed) => seed..seed + 1,
        None => CI_SEEDS,
    };
    for seed in seeds {
        let report = run_seed(seed, &options);
        if report.violation.is_some() {
            fail(&report, None);
        }
    }
}

/// Replays one seed (`SIM_SEED=n`, default 0) and prints its whole trace.
#[test]
fn replay() {
    let seed = seed_from_env().unwrap_or(0);
    let options = SimOptions {
        keep_trace: true,
        ..SimOptions::default()
    };
    let report = run_seed(seed, &options);
    if std::env::var_os("SIM_SEED").is_some() || std::env::var_os("MADSIM_TEST_SEED").is_some() {
        for line in &report.trace {
            println!("{line}");
        }
    }
    if report.violation.is_some() {
        fail(&report, None);
    }
}

#[test]
fn same_seed_gives_a_byte_identical_trace() {
    let options = SimOptions {
        keep_trace: true,
        ..SimOptions::default()
    };
    // Seed 2 has a moderator.
    for seed in [2, 3, 17] {
        let first = run_seed(seed, &options);
        let second = run_seed(seed, &options);
        assert!(first.trace.len() > 100, "seed {seed} did too little");
        assert_eq!(
            first.trace, second.trace,
            "seed {seed} is not deterministic"
        );
        assert_eq!(first.trace_hash, second.trace_hash);
    }
    let other = run_seed(4, &options);
    assert_ne!(run_seed(3, &options).trace_hash, other.trace_hash);
}

#[test]
fn every_planted_bug_is_caught() {
    let mut runs: Vec<(String, SimOptions)> = PlantedBug::ALL
        .into_iter()
        .map(|bug| {
            let options = SimOptions {
                planted: Some(bug),
                ..SimOptions::default()
            };
            (format!("{bug:?}"), options)
        })
        .collect();
    runs.extend(HostBug::ALL.into_iter().map(|bug| {
        let options = SimOptions {
            host_bug: Some(bug),
            ..SimOptions::default()
        };
        (format!("{bug:?} (host)"), options)
    }));
    let mut table = Vec::new();
    for (name, options) in runs {
        let caught = find_violation(0..PLANTED_SEEDS_MAX, &options);
        table.push((name, caught));
    }
    println!("| planted bug | seed | invariant | finding |");
    println!("|---|---|---|---|");
    for (bug, caught) in &table {
        match caught {
            Some(report) => {
                let v = report.violation.as_ref().expect("a violation");
                // By characters: a detail may quote text outside the BMP.
                let detail: String = v.detail.chars().take(100).collect();
                println!("| {bug} | {} | {} | {detail} |", report.seed, v.invariant);
            }
            None => println!("| {bug} | - | NOT CAUGHT | |"),
        }
    }
    let missed: Vec<_> = table
        .iter()
        .filter(|(_, caught)| caught.is_none())
        .map(|(bug, _)| bug.clone())
        .collect();
    assert!(
        missed.is_empty(),
        "not caught within {PLANTED_SEEDS_MAX} seeds: {missed:?}"
    );
}
