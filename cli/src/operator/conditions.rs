//! The IsolaConfig's conditions for a [`Phase`], Kubernetes-style: Ready, Progressing and
//! Degraded. A condition's
//! lastTransitionTime is kept while its status stays the same, so it says since when.

use super::crd::{Condition, NodeStatus, NAME};
use super::phase::Phase;

/// What the conditions describe.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub phase: &'a Phase,
    pub problems: &'a [String],
    pub nodes: &'a [NodeStatus],
    pub image: &'a str,
    pub generation: Option<i64>,
}

/// The conditions for `i`, times carried over from `previous` where the status is unchanged.
pub fn conditions(i: &Inputs, previous: &[Condition], now: &str) -> Vec<Condition> {
    let c = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" }.to_string();
        let since = previous
            .iter()
            .find(|p| p.type_ == type_ && p.status == status)
            .map_or_else(|| now.to_string(), |p| p.last_transition_time.clone());
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: since,
            observed_generation: i.generation,
        }
    };
    let installed = i.nodes.iter().filter(|n| n.ready).count();
    let wanted = i.nodes.iter().filter(|n| n.image.is_some()).count();
    let waiting: Vec<&str> = i
        .nodes
        .iter()
        .filter(|n| n.image.is_some() && !n.ready)
        .map(|n| n.name.as_str())
        .collect();
    let failing: Vec<String> = i
        .nodes
        .iter()
        .filter_map(|n| Some(format!("node {}: {}", n.name, n.last_error.as_deref()?)))
        .collect();
    let degraded = if failing.is_empty() {
        c(
            "Degraded",
            false,
            "AsExpected",
            "no node's installer fails".into(),
        )
    } else {
        c("Degraded", true, "InstallerFailing", failing.join("; "))
    };
    let progress = format!(
        "{installed} of {wanted} node(s) done with {}{}",
        i.image,
        if waiting.is_empty() {
            String::new()
        } else {
            format!("; waiting for {}", waiting.join(", "))
        }
    );
    match i.phase {
        Phase::Ignored => vec![c(
            "Ready",
            false,
            "IgnoredName",
            format!(
                "only the IsolaConfig named `{NAME}` is reconciled (one per cluster); this \
                 one changes nothing"
            ),
        )],
        Phase::Invalid => vec![
            c("Ready", false, "InvalidSpec", i.problems.join("; ")),
            c(
                "Progressing",
                false,
                "InvalidSpec",
                "nothing applied".into(),
            ),
            degraded,
        ],
        Phase::Progressing => vec![
            c("Ready", false, "Installing", progress.clone()),
            c("Progressing", true, "RollingOut", progress),
            degraded,
        ],
        Phase::Degraded => vec![
            c("Ready", false, "InstallerFailing", failing.join("; ")),
            c(
                "Progressing",
                false,
                "RolloutStalled",
                format!("{progress}; the rollout waits for the failing node(s)"),
            ),
            degraded,
        ],
        Phase::Ready => vec![
            c("Ready", true, "Installed", progress.clone()),
            c("Progressing", false, "Complete", progress),
            degraded,
        ],
        Phase::NoNodes => vec![
            c(
                "Ready",
                false,
                "NoNodes",
                "the installer runs on no node: does spec.nodeSelector match any?".into(),
            ),
            c(
                "Progressing",
                false,
                "NoNodes",
                "nothing to roll out".into(),
            ),
            degraded,
        ],
        Phase::Uninstalling | Phase::Uninstalled => vec![
            c(
                "Ready",
                false,
                "Uninstalling",
                format!(
                    "{installed} of {wanted} node(s) cleaned up{}",
                    if waiting.is_empty() {
                        String::new()
                    } else {
                        format!("; waiting for {}", waiting.join(", "))
                    }
                ),
            ),
            c("Progressing", true, "Uninstalling", "cleanup mode".into()),
            degraded,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, err: Option<&str>) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            ready,
            version: None,
            image: Some("img:2".into()),
            last_error: err.map(Into::into),
        }
    }

    fn inputs<'a>(phase: &'a Phase, nodes: &'a [NodeStatus]) -> Inputs<'a> {
        Inputs {
            phase,
            problems: &[],
            nodes,
            image: "img:2",
            generation: Some(4),
        }
    }

    fn get<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
        cs.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn degraded_names_the_node_and_its_error() {
        let n = [
            node("a", true, None),
            node("b", false, Some("exited 1: no kvm")),
        ];
        let cs = conditions(&inputs(&Phase::Degraded, &n), &[], "T1");
        let d = get(&cs, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.message.as_str()),
            ("True", "node b: exited 1: no kvm")
        );
        let r = get(&cs, "Ready");
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "InstallerFailing")
        );
        assert_eq!(r.observed_generation, Some(4));
        assert!(cs.iter().all(|c| c.type_ != "VmTemplates"));
    }

    #[test]
    fn transition_times_are_kept_while_the_status_stays() {
        let n = [node("a", false, None)];
        let before = conditions(&inputs(&Phase::Progressing, &n), &[], "T1");
        let n = [node("a", true, None)];
        let after = conditions(&inputs(&Phase::Ready, &n), &before, "T2");
        assert_eq!(
            get(&after, "Ready").last_transition_time,
            "T2",
            "False to True"
        );
        assert_eq!(get(&after, "Progressing").last_transition_time, "T2");
        assert_eq!(
            get(&after, "Degraded").last_transition_time,
            "T1",
            "False still"
        );
        assert_eq!(
            get(&after, "Ready").message,
            "1 of 1 node(s) done with img:2"
        );
    }

    #[test]
    fn invalid_and_ignored_say_why() {
        let problems = ["spec.node.runtime \"docker\": expected containerd or crio".to_string()];
        let mut i = inputs(&Phase::Invalid, &[]);
        i.problems = &problems;
        let cs = conditions(&i, &[], "T");
        assert_eq!(get(&cs, "Ready").reason, "InvalidSpec");
        assert!(get(&cs, "Ready").message.contains("docker"));
        let cs = conditions(&inputs(&Phase::Ignored, &[]), &[], "T");
        assert_eq!(cs.len(), 1);
        assert_eq!(get(&cs, "Ready").reason, "IgnoredName");
    }
}
