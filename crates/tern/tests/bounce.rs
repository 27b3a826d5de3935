//! `tern bounce classify` as an operator types it, against the built binary.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn tern(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    // Only what the test sets: no TERN_* leaks in from the developer's shell.
    for (k, _) in std::env::vars() {
        if k.starts_with("TERN_") {
            c.env_remove(k);
        }
    }
    c.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("run tern");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("tern output")
}

fn ok(args: &[&str], env: &[(&str, &str)], stdin: &str) -> String {
    let out = tern(args, env, stdin);
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn classify_prints_class_and_rule() {
    let out = ok(
        &[
            "bounce",
            "classify",
            "550 5.1.1 The email account that you tried to reach does not exist",
        ],
        &[],
        "",
    );
    assert_eq!(
        out,
        "invalid_recipient (rule gmail-no-such-account; permanent; suppresses the recipient)\n"
    );
    // Unquoted words are one reply; reputation blocks never suppress.
    let out = ok(
        &["bounce", "classify", "421", "4.7.28", "unusual", "rate"],
        &[],
        "",
    );
    assert_eq!(
        out,
        "rate_limited (rule gmail-unsolicited-rate-limited; temporary)\n"
    );
    // A multi-line reply from stdin.
    let out = ok(
        &["bounce", "classify", "-"],
        &[],
        "550-5.7.26 This mail has been blocked because the sender is\r\n550 5.7.26 unauthenticated. - gsmtp\r\n",
    );
    assert_eq!(
        out,
        "policy_block (rule gmail-unauthenticated; permanent)\n"
    );
    // No rule: the RFC 3463 meaning.
    let out = ok(&["bounce", "classify", "552 5.3.4 zu gross"], &[], "");
    assert_eq!(
        out,
        "message_too_large (RFC 3463 meaning of 5.3.4; permanent)\n"
    );
}

#[test]
fn operator_rules_file_replaces_the_built_in_rules() {
    let dir = tempfile::tempdir().expect("dir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"acme\"\nclass = \"spam_block\"\ntext = \"acme says no\"\n",
    )
    .expect("write");
    let r = rules.to_str().expect("utf-8");
    let out = ok(
        &["bounce", "classify", "550 acme says no"],
        &[("TERN_BOUNCE_RULES_FILE", r)],
        "",
    );
    assert_eq!(out, "spam_block (rule acme; permanent)\n");
    let out = ok(
        &[
            "bounce",
            "classify",
            "--rules",
            r,
            "550 5.1.1 The email account that you tried to reach does not exist",
        ],
        &[],
        "",
    );
    assert_eq!(
        out,
        "invalid_recipient (RFC 3463 meaning of 5.1.1; permanent; suppresses the recipient)\n"
    );

    // An unknown key in the file stops the binary with the key and the line.
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"acme\"\nclass = \"spam_block\"\nregex = \"x\"\n",
    )
    .expect("write");
    let out = tern(
        &["bounce", "classify", "550 x"],
        &[("TERN_BOUNCE_RULES_FILE", r)],
        "",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("TERN_BOUNCE_RULES_FILE") && err.contains("line 4:") && err.contains("regex"),
        "{err}"
    );

    // So does a cluster secret that is too short, naming its key.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "too short\n").expect("write");
    let out = tern(
        &["config", "check"],
        &[("TERN_SECRET_FILE", secret.to_str().expect("utf-8"))],
        "",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("TERN_SECRET_FILE") && err.contains("9 bytes"),
        "{err}"
    );
}

#[test]
fn config_check_lists_the_keys() {
    let out = ok(&["config", "check"], &[], "");
    assert!(out.contains("TERN_BOUNCE_RULES_FILE=\t#"), "{out}");
    assert!(out.contains("TERN_SECRET_FILE=\t#"), "{out}");
}
