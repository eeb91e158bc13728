//! Every command's `--help` gives examples and the exit statuses; errors say what to do.

mod ops_support;

use ops_support::{stderr, stdout, tadpole};

#[test]
fn every_command_has_help_with_examples_and_exit_statuses() {
    for command in [
        &[][..],
        &["stat"],
        &["tap"],
        &["clean"],
        &["demo"],
        &["pingpong"],
        &["relay"],
        &["keygen"],
        &["metrics"],
        &["chaos"],
    ] {
        let args: Vec<&str> = command.iter().copied().chain(["--help"]).collect();
        let out = tadpole(&args);
        let text = stdout(&out);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(text.contains("Examples:\n  tadpole"), "{args:?}:\n{text}");
        for status in ["Exit status:", "0  success", "1  the command failed", "2  usage error", "3  a ring's file"] {
            assert!(text.contains(status), "{args:?} lacks {status:?}:\n{text}");
        }
    }
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1_with_a_hint() {
    let out = tadpole(&["tap"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = tadpole(&["stat", "--watch", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = tadpole(&["tap", "no-such-ring-here"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("tadpole: error: opening ring \"no-such-ring-here\""), "{err}");
    assert!(err.contains("hint: `tadpole stat` lists the rings"), "{err}");
    let out = tadpole(&["tap", "../etc/passwd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("hint: a ring name is"), "{}", stderr(&out));
}
