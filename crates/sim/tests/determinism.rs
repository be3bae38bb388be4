//! Same seed, same run, byte for byte; different seeds, different runs; and the
//! replay command a failure prints parses back to the very same config.

use clap::Parser;
use sluice_sim::cli::Args;
use sluice_sim::{run, FaultMix, SimConfig};

fn traced(cfg: &SimConfig) -> (String, sluice_sim::Report) {
    let mut out = Vec::new();
    let report = run(cfg, Some(&mut out)).unwrap_or_else(|f| panic!("{f}"));
    (String::from_utf8(out).unwrap(), report)
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for seed in [7, 1351] {
        let cfg = SimConfig::new(seed);
        let (a, ra) = traced(&cfg);
        let (b, rb) = traced(&cfg);
        assert!(
            a.lines().count() > 1000,
            "a real run: {} lines",
            a.lines().count()
        );
        assert!(a.contains("CONVERGED"), "the run ended by converging");
        assert!(
            ra.faults.total() > 0,
            "faults were injected: {:?}",
            ra.faults
        );
        assert_eq!(ra, rb);
        if a != b {
            let at = a
                .lines()
                .zip(b.lines())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            panic!(
                "seed {seed}: traces differ at line {at}:\n{}\n{}",
                a.lines().nth(at).unwrap_or(""),
                b.lines().nth(at).unwrap_or("")
            );
        }
        // And untraced: the trace is only an observer.
        assert_eq!(run(&cfg, None).unwrap(), ra);
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let (a, ra) = traced(&SimConfig::new(1));
    let (b, rb) = traced(&SimConfig::new(2));
    assert_ne!(a, b);
    assert_ne!((ra.events, ra.faults), (rb.events, rb.faults));
}

#[test]
fn the_replay_command_is_the_config() {
    let mut cfg = SimConfig {
        nodes: 5,
        ticks: 123,
        latency_max_ms: 9,
        retain_offsets: 7,
        idempotent: true,
        ..SimConfig::new(42)
    };
    cfg.faults.drop = 0.125;
    cfg.faults.power_losses = 1.5;
    for c in [cfg, SimConfig::new(3)] {
        let args = c.replay_args();
        let argv = std::iter::once("sluice-sim").chain(args.split_whitespace());
        assert_eq!(Args::parse_from(argv).config(), c);
    }
    assert_eq!(
        Args::parse_from(["sluice-sim"]).config(),
        SimConfig::new(0),
        "the binary's defaults are the library's"
    );
    assert_eq!(
        Args::parse_from(["sluice-sim", "--no-faults", "--crashes", "2"])
            .config()
            .faults,
        FaultMix {
            crashes: 2.0,
            ..FaultMix::NONE
        }
    );
}
