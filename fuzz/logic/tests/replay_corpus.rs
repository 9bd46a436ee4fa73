//! Replays the committed corpus (`fuzz/corpus/<target>/*`) and the hand-made seeds through
//! each target's logic on stable, so CI catches regressions without nightly or cargo-fuzz.

use std::fs;
use std::path::{Path, PathBuf};

use edgechat_fuzz_logic::{seeds, TARGETS};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus")
}

fn target(name: &str) -> fn(&[u8]) {
    TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .map(|(_, run)| *run)
        .unwrap_or_else(|| panic!("no target {name}"))
}

#[test]
fn replay_corpus() {
    let mut replayed = 0;
    for (name, run) in TARGETS {
        let dir = corpus_dir().join(name);
        let Ok(entries) = fs::read_dir(&dir) else {
            panic!("no corpus at {}", dir.display());
        };
        let mut files: Vec<PathBuf> = entries.map(|e| e.expect("readable").path()).collect();
        files.sort();
        assert!(!files.is_empty(), "empty corpus for {name}");
        for file in files {
            let data = fs::read(&file).expect("readable");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name} fails on {}", file.display());
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} corpus files");
}

#[test]
fn replay_seeds() {
    for seed in seeds::all() {
        target(seed.target)(&seed.data);
    }
}

/// Every corpus directory belongs to a target (a renamed target must move its corpus).
#[test]
fn corpus_dirs_match_targets() {
    for entry in fs::read_dir(corpus_dir()).expect("fuzz/corpus exists") {
        let name = entry.expect("readable").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(target, _)| *target == name),
            "fuzz/corpus/{name} has no target"
        );
    }
}

/// Writes the hand-made seeds into the corpus: `cargo test -p edgechat-fuzz-logic --
/// --ignored write_seeds`.
#[test]
#[ignore = "writes files; run by hand when the seeds change"]
fn write_seeds() {
    for seed in seeds::all() {
        let dir = corpus_dir().join(seed.target);
        fs::create_dir_all(&dir).expect("writable");
        fs::write(dir.join(format!("seed-{}", seed.name)), &seed.data).expect("writable");
    }
}

/// Runs one file through one target, to debug a crash on stable:
/// `FUZZ_TARGET=room_steps FUZZ_INPUT=fuzz/artifacts/... cargo test -p edgechat-fuzz-logic
/// -- --ignored --nocapture reproduce`.
#[test]
#[ignore = "needs FUZZ_TARGET and FUZZ_INPUT"]
fn reproduce() {
    let name = std::env::var("FUZZ_TARGET").expect("FUZZ_TARGET");
    let path = std::env::var("FUZZ_INPUT").expect("FUZZ_INPUT");
    target(&name)(&fs::read(path).expect("readable"));
}
