//! `tadpole clean` with rings whose processes are real children: it removes only a ring whose
//! creator, producer and consumer are all gone, keeps the others, and says why for each.

mod ops_support;

use std::time::Duration;

use ipc_core::{RingBuilder, Segment};
use ops_support::{ChildProcess, Unlink, forever, stderr, stdout, tadpole, unique};

const CREATE_ENV: &str = "TADPOLE_OPS_CLEAN_CREATE";
const PRODUCE_ENV: &str = "TADPOLE_OPS_CLEAN_PRODUCE";

/// Child: creates the ring named in the environment, keeps it, and exits.
#[test]
fn child_creates_a_ring_and_exits() {
    if let Ok(name) = std::env::var(CREATE_ENV) {
        RingBuilder::new(4096).create_named(&name).unwrap().keep();
    }
}

/// Child: attaches as the producer of the ring named in the environment and idles until killed.
#[test]
fn child_holds_the_producer_side_until_killed() {
    let Ok(name) = std::env::var(PRODUCE_ENV) else { return };
    let _producer = Segment::open(&name).unwrap().producer().unwrap();
    println!("ready");
    forever(Duration::from_secs(1), || {})
}

fn line_for<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.split(':').next().is_some_and(|head| head.ends_with(&format!(" {name}"))))
        .unwrap_or_else(|| panic!("no line for {name}:\n{text}"))
}

#[test]
fn clean_keeps_rings_with_a_live_process_removes_dead_ones_and_says_why() {
    // Only this test's rings: other tests (and other runs) leave rings of their own.
    let prefix = format!("{}-", unique("clean"));
    let (dead, held, mine) = (format!("{prefix}dead"), format!("{prefix}held"), format!("{prefix}mine"));
    let _unlink = [Unlink(dead.clone()), Unlink(held.clone()), Unlink(mine.clone())];
    let _mine = RingBuilder::new(4096).create_named(&mine).unwrap();
    let mut creator = ChildProcess::start("child_creates_a_ring_and_exits", &[(CREATE_ENV, &dead)], false);
    creator.wait_success();
    let dead_creator = creator.pid();
    let mut creator = ChildProcess::start("child_creates_a_ring_and_exits", &[(CREATE_ENV, &held)], false);
    creator.wait_success();
    let mut producer = ChildProcess::start("child_holds_the_producer_side_until_killed", &[(PRODUCE_ENV, &held)], true);

    let out = tadpole(&["clean", "--dry-run", "--prefix", &prefix]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        line_for(&text, &dead),
        format!(
            "would remove {dead}: every process is gone (creator pid {dead_creator} gone, producer never attached, \
             consumer never attached)"
        )
    );
    assert_eq!(line_for(&text, &held), format!("kept {held}: in use: producer pid {} running", producer.pid()));
    assert_eq!(line_for(&text, &mine), format!("kept {mine}: in use: creator pid {} running", std::process::id()));
    assert!(Segment::open(&dead).is_ok(), "a dry run removes nothing");

    let out = tadpole(&["clean", "--prefix", &prefix]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(line_for(&text, &dead).starts_with(&format!("removed {dead}: every process is gone")), "{text}");
    assert!(line_for(&text, &held).starts_with(&format!("kept {held}: in use")), "{text}");
    assert_eq!(text.lines().last().unwrap(), "removed 1 ring(s), kept 2", "a summary line ends it: {text}");
    assert!(Segment::open(&dead).is_err());
    assert!(Segment::open(&held).is_ok() && Segment::open(&mine).is_ok());

    // Once its producer is killed, the held ring goes too, with the producer named as dead.
    let producer_pid = producer.pid();
    producer.kill();
    let out = tadpole(&["clean", "--prefix", &prefix]);
    let text = stdout(&out);
    let line = line_for(&text, &held);
    assert!(line.starts_with(&format!("removed {held}: every process is gone (creator pid ")), "{line}");
    assert!(line.contains(&format!("producer pid {producer_pid} (DEAD)")), "{line}");
    assert!(Segment::open(&held).is_err());
    assert!(Segment::open(&mine).is_ok());
}
