//! `inlet check-config`.

use std::process::Command;

fn check(config: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_inlet"));
    cmd.args(["check-config", "--config", "c.toml"])
        .current_dir(dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_every_problem_with_its_path_and_exits_1() {
    let (ok, _, err) = check(
        "[workers]\nconcurrency = 0\n[[sources]]\nname = \"a\"\nprovider = \"twilio\"\nsecret = \"env:INLET_TEST_UNSET_SECRET\"\n[[sources.actions]]\ntype = \"forward\"\n",
        &[],
    );
    assert!(!ok);
    assert!(err.contains("workers.concurrency"), "{err}");
    assert!(
        err.contains("sources[0].secret: environment variable INLET_TEST_UNSET_SECRET is not set"),
        "{err}"
    );
    assert!(err.contains("sources[0].actions[0].url"), "{err}");
}

#[test]
fn check_config_reports_unknown_keys_with_their_path() {
    let (ok, _, err) = check("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n", &[]);
    assert!(!ok);
    assert!(err.contains("server.lisen"), "{err}");
}

#[test]
fn check_config_accepts_a_valid_file_with_env_overrides() {
    let (ok, out, err) = check(
        "[[sources]]\nname = \"t\"\nprovider = \"twilio\"\nsecret = \"env:INLET_TEST_TOKEN\"\n",
        &[
            ("INLET_TEST_TOKEN", "x"),
            ("INLET_WORKERS__CONCURRENCY", "4"),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("config ok"), "{out}");
    let (ok, _, err) = check("", &[("INLET_WORKERS__CONCURRENCY", "zero")]);
    assert!(!ok);
    assert!(err.contains("workers.concurrency"), "{err}");
}
