//! Where an IsolaConfig stands, decided without I/O from what the controller observed (after
//! applying what the spec asks for); the controller acts on the answer:
//!
//! - install: the DaemonSet's own RollingUpdate (maxUnavailable 1, maxSurge 0, readiness =
//!   install done) replaces one node's pod at a time and stops at a node whose new pod never
//!   gets Ready: that is `Degraded` (the node and its last error), not a reason to intervene;
//! - deletion (the finalizer): the DaemonSet in cleanup mode until its rollout completes
//!   (every node's cleanup pod Ready: uninstalled), then `Uninstalled`: delete it, drop the
//!   finalizer.

use super::crd::NodeStatus;
use super::desired::Mode;
use super::status::Rollout;

/// The installer DaemonSet as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installer {
    /// Its mode (`None`: an installer env the operator did not write).
    pub mode: Option<Mode>,
    pub rollout: Rollout,
}

/// What the controller observed.
#[derive(Debug)]
pub struct Facts<'a> {
    /// The IsolaConfig is the one reconciled ([`super::crd::NAME`]).
    pub singleton: bool,
    /// It has a deletionTimestamp.
    pub deleting: bool,
    /// The spec's problems (`validate::problems`).
    pub problems: &'a [String],
    pub installer: Option<Installer>,
    pub nodes: &'a [NodeStatus],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not the singleton: left alone.
    Ignored,
    /// The spec cannot be applied; nothing was (and a deletion waits for a fixed spec).
    Invalid,
    /// Rolling out, no node failing.
    Progressing,
    /// Some node's installer fails; the rollout stops there.
    Degraded,
    /// Every node installed with the spec's image and labelled.
    Ready,
    /// The DaemonSet selects no node.
    NoNodes,
    /// Being deleted: cleanup running on the nodes.
    Uninstalling,
    /// Being deleted, every node cleaned up (or nothing was ever installed).
    Uninstalled,
}

impl Phase {
    /// Seconds until the next look: node labels and pods are not watched, so a phase still
    /// moving is looked at often.
    pub fn requeue_seconds(&self) -> u64 {
        match self {
            Phase::Ready | Phase::Ignored | Phase::Invalid | Phase::NoNodes => 60,
            _ => 10,
        }
    }
}

pub fn decide(f: &Facts) -> Phase {
    if !f.singleton {
        return Phase::Ignored;
    }
    let failing = f.nodes.iter().any(|n| n.last_error.is_some());
    if f.deleting {
        return match f.installer {
            None => Phase::Uninstalled,
            Some(i) if i.mode == Some(Mode::Cleanup) => {
                if i.rollout.complete() && f.nodes.iter().all(|n| n.ready || n.image.is_none()) {
                    Phase::Uninstalled
                } else {
                    Phase::Uninstalling
                }
            }
            // The cleanup DaemonSet is built from the spec: with a bad one, nothing to run.
            Some(_) if !f.problems.is_empty() => Phase::Invalid,
            Some(_) => Phase::Uninstalling,
        };
    }
    if !f.problems.is_empty() {
        return Phase::Invalid;
    }
    let Some(i) = f.installer else {
        return Phase::Progressing;
    };
    if failing {
        return Phase::Degraded;
    }
    // Nodes without a pod are the ones the DaemonSet does not want (taints): its count is
    // the truth there.
    if !i.rollout.complete() || f.nodes.iter().any(|n| n.image.is_some() && !n.ready) {
        return Phase::Progressing;
    }
    if i.rollout.desired == 0 {
        return Phase::NoNodes;
    }
    Phase::Ready
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, err: Option<&str>) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            ready,
            version: None,
            image: Some("img".into()),
            last_error: err.map(Into::into),
        }
    }

    fn rollout(generation: i64, observed: i64, desired: i32, updated: i32, ready: i32) -> Rollout {
        Rollout {
            generation,
            observed_generation: observed,
            desired,
            updated,
            ready,
        }
    }

    fn installing(r: Rollout) -> Option<Installer> {
        Some(Installer {
            mode: Some(Mode::Install),
            rollout: r,
        })
    }

    fn facts<'a>(inst: Option<Installer>, nodes: &'a [NodeStatus]) -> Facts<'a> {
        Facts {
            singleton: true,
            deleting: false,
            problems: &[],
            installer: inst,
            nodes,
        }
    }

    #[test]
    fn a_complete_rollout_with_every_node_ready_is_ready() {
        let n = [node("a", true, None), node("b", true, None)];
        assert_eq!(
            decide(&facts(installing(rollout(2, 2, 2, 2, 2)), &n)),
            Phase::Ready
        );
    }

    #[test]
    fn a_stale_or_partial_rollout_is_progressing() {
        let n = [node("a", true, None), node("b", true, None)];
        for r in [
            rollout(3, 2, 2, 2, 2),
            rollout(2, 2, 2, 1, 2),
            rollout(2, 2, 2, 2, 1),
        ] {
            assert_eq!(
                decide(&facts(installing(r), &n)),
                Phase::Progressing,
                "{r:?}"
            );
        }
        let n = [node("a", true, None), node("b", false, None)];
        assert_eq!(
            decide(&facts(installing(rollout(2, 2, 2, 2, 2)), &n)),
            Phase::Progressing,
            "a node not labelled yet"
        );
        assert_eq!(
            decide(&facts(None, &[])),
            Phase::Progressing,
            "just applied"
        );
    }

    #[test]
    fn a_failing_node_is_degraded_and_stops_nothing_else() {
        let n = [
            node("a", true, None),
            node("b", false, Some("exited 1: boom")),
        ];
        assert_eq!(
            decide(&facts(installing(rollout(2, 2, 2, 1, 1)), &n)),
            Phase::Degraded
        );
    }

    #[test]
    fn no_wanted_node_is_said_so_and_podless_nodes_do_not_block() {
        assert_eq!(
            decide(&facts(installing(rollout(1, 1, 0, 0, 0)), &[])),
            Phase::NoNodes
        );
        let mut tainted = node("cp", false, None);
        tainted.image = None;
        let n = [node("a", true, None), tainted];
        assert_eq!(
            decide(&facts(installing(rollout(1, 1, 1, 1, 1)), &n)),
            Phase::Ready
        );
    }

    #[test]
    fn invalid_and_ignored_come_first() {
        let problems = ["bad".to_string()];
        let mut f = facts(installing(rollout(1, 1, 1, 1, 1)), &[]);
        f.problems = &problems;
        assert_eq!(decide(&f), Phase::Invalid);
        f.singleton = false;
        assert_eq!(decide(&f), Phase::Ignored);
    }

    #[test]
    fn deletion_waits_for_every_cleanup_pod() {
        let cleanup = |r| {
            Some(Installer {
                mode: Some(Mode::Cleanup),
                rollout: r,
            })
        };
        let done = [node("a", true, None)];
        let mut f = facts(cleanup(rollout(3, 2, 1, 1, 1)), &done);
        f.deleting = true;
        assert_eq!(decide(&f), Phase::Uninstalling, "cleanup not observed yet");
        f.installer = cleanup(rollout(3, 3, 1, 1, 1));
        assert_eq!(decide(&f), Phase::Uninstalled);
        let pending = [node("a", false, Some("CrashLoopBackOff"))];
        f.nodes = &pending;
        assert_eq!(decide(&f), Phase::Uninstalling, "a node still installed");
        f.installer = None;
        assert_eq!(decide(&f), Phase::Uninstalled, "nothing to clean up");
        let problems = ["bad".to_string()];
        f.problems = &problems;
        f.installer = installing(rollout(1, 1, 1, 1, 1));
        assert_eq!(decide(&f), Phase::Invalid, "no cleanup from a bad spec");
        f.installer = cleanup(rollout(1, 1, 1, 1, 1));
        f.nodes = &done;
        assert_eq!(
            decide(&f),
            Phase::Uninstalled,
            "a cleanup already applied goes on"
        );
    }
}
