//! The fuzz corpus and every crash the fuzzers found, replayed in the normal test run:
//! each file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the
//! same function the `cargo fuzz` target runs (`netkey::fuzzing::<target>`), which
//! panics on any broken property. `fuzz/README.md` says how to add a regression.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("frame", netkey::fuzzing::frame),
    ("message", netkey::fuzzing::message),
    ("discovery", netkey::fuzzing::discovery),
    ("key_file", netkey::fuzzing::key_file),
    ("state_file", netkey::fuzzing::state_file),
];

/// Runs every file under `fuzz/<dir>/<target>/` through its target; returns how many
/// files each target ran.
fn replay(dir: &str) -> Vec<(&'static str, usize)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut counts = Vec::new();
    for (name, target) in TARGETS {
        let mut n = 0;
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            counts.push((name, 0));
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(
                outcome.is_ok(),
                "fuzz/{dir}/{name}/{} fails its target (run `cargo fuzz run {name} {}` in fuzz/ to see it alone)",
                path.file_name().unwrap().to_string_lossy(),
                path.display()
            );
            n += 1;
        }
        counts.push((name, n));
    }
    counts
}

#[test]
fn the_fuzz_corpus_passes_every_target() {
    for (target, n) in replay("corpus") {
        // The seeds alone (examples/fuzz_seeds.rs) give every target several inputs.
        assert!(n >= 5, "fuzz/corpus/{target} has only {n} files");
    }
}

#[test]
fn every_crash_the_fuzzers_found_stays_fixed() {
    let counts = replay("regressions");
    assert!(
        counts.iter().map(|(_, n)| n).sum::<usize>() > 0,
        "fuzz/regressions holds no crash input: {counts:?}"
    );
}

/// Found by the `state_file` target: a 64-byte audit head hash holding a multi-byte
/// character panicked while slicing it into hex pairs. The client state file, an audit
/// export and `netkeyctl audit verify --anchor` all read one.
#[test]
fn an_audit_head_hash_with_a_multibyte_character_is_refused_not_a_panic() {
    use netkey::proto::AuditHead;
    let hash = format!("a\u{e9}{}", "a".repeat(61));
    assert_eq!(hash.len(), 64);
    let head = format!(r#"{{"count":1,"hash":"{hash}"}}"#);
    let err = serde_json::from_str::<AuditHead>(&head).unwrap_err();
    assert!(err.to_string().contains("64 hex digits"), "{err}");
    // Nor a sign, which `from_str_radix` would have read as part of a number.
    let plus = format!(r#"{{"count":1,"hash":"+a{}"}}"#, "a".repeat(62));
    assert!(serde_json::from_str::<AuditHead>(&plus).is_err());

    // The client reads it from its state file: an error naming the file, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.json");
    let state = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/state_file/seed-client-state"),
    )
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&state).unwrap();
    v["audit_head"]["hash"] = serde_json::Value::String(hash);
    std::fs::write(&path, v.to_string()).unwrap();
    let err = netkey::client::ClientState::load(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains("is not a netkey client state file"),
        "{err}"
    );
}
