//! Every command's `--help` shows an example, and completions can be generated.

use std::process::Command;
use trellis_testkit::process::cargo_bin;

fn help(args: &[&str]) -> String {
    let out = Command::new(cargo_bin("trellis")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "trellis {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_subcommand_help_has_an_example() {
    let commands: &[&[&str]] = &[
        &[],
        &["proxy"],
        &["capture"],
        &["capture", "install"],
        &["capture", "remove"],
        &["validate"],
        &["control"],
        &["apply"],
        &["get"],
        &["delete"],
        &["history"],
        &["rollback"],
        &["completions"],
        &["token"],
        &["token", "create"],
        &["ca"],
    ];
    for args in commands {
        let text = help(args);
        assert!(text.contains("Example"), "`trellis {} --help` has no example:\n{text}", args.join(" "));
    }
}

#[test]
fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(cargo_bin("trellis")).args(["completions", shell]).output().unwrap();
        assert!(out.status.success() && out.stdout.len() > 1000, "no {shell} completions");
    }
}

#[test]
fn every_example_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(cargo_bin("trellis")).arg("validate").arg("-f").arg(&path).output().unwrap();
            assert!(out.status.success(), "{} is invalid:\n{}", path.display(), String::from_utf8_lossy(&out.stdout));
            checked += 1;
        }
    }
    assert!(checked >= 5);
}
