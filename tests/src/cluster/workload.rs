//! The pods the node tests run, as a user writes them (YAML applied with kubectl), one set per
//! runtime class so that each check compares an isola pod with a runc pod on the same node.
//!
//! `full-<class>`: an init container writes into an emptyDir that two app containers share;
//! `web` serves HTTP (readiness probe) with an exec liveness probe, mounts a ConfigMap, a
//! Secret, the downward API and a hostPath, and writes `got-TERM` to the hostPath when it is
//! asked to stop; `echoer` reads its stdin (for `kubectl attach`).
//! `crasher-<class>`: exits 3 after printing its run number, so the kubelet restarts it.

use std::path::Path;

/// The runtime classes the checks compare: isola's and the node's default (runc).
pub const CLASSES: [Class; 2] = [Class::Isola, Class::Runc];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Isola,
    Runc,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Isola => "isola",
            Class::Runc => "runc",
        }
    }

    /// The pod spec's `runtimeClassName` line (none for the default runtime).
    fn spec_line(self) -> &'static str {
        match self {
            Class::Isola => "  runtimeClassName: isola\n",
            Class::Runc => "",
        }
    }

    pub fn full_pod(self) -> String {
        format!("full-{}", self.name())
    }

    pub fn crasher_pod(self) -> String {
        format!("crasher-{}", self.name())
    }

    /// The hostPath directory of this class's pod under the cluster's `dir`.
    pub fn host_dir(self, dir: &Path) -> std::path::PathBuf {
        dir.join(format!("hostpath-{}", self.name()))
    }
}

/// The ConfigMap and Secret both classes' pods mount (`value` = what the test expects now).
pub fn config_objects(value: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
data:
  greeting: "{value}"
---
apiVersion: v1
kind: Secret
metadata:
  name: app-secret
stringData:
  password: "{value}"
"#
    )
}

/// What the web container runs: an HTTP server for the readiness probe, a tick a second on
/// stdout, and on SIGTERM `got-TERM` into the hostPath before a clean exit.
const WEB: &str = "mkdir -p /www && echo ok > /www/healthz && \
    (httpd -f -p 8080 -h /www &) && \
    trap 'echo got-TERM > /host/term; exit 0' TERM; \
    i=0; while :; do echo tick $i; i=$((i+1)); sleep 1; done";

/// The full pod of `class`, its hostPath at `host_dir`.
pub fn full_pod(class: Class, host_dir: &Path) -> String {
    let image = crate::containerd::TEST_IMAGE;
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: full, class: {class}}}
  annotations: {{note: downward}}
spec:
{runtime_class}  terminationGracePeriodSeconds: 45
  initContainers:
  - name: init
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "echo from-init > /shared/init.txt"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: web
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "{web}"]
    securityContext:
      seccompProfile: {{type: RuntimeDefault}}
    env:
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    ports: [{{containerPort: 8080}}]
    readinessProbe:
      httpGet: {{path: /healthz, port: 8080}}
      periodSeconds: 2
    livenessProbe:
      exec: {{command: ["cat", "/www/healthz"]}}
      periodSeconds: 3
      failureThreshold: 2
    resources:
      requests: {{cpu: 100m, memory: 64Mi}}
      limits: {{cpu: "1", memory: 256Mi}}
    volumeMounts:
    - {{name: shared, mountPath: /shared}}
    - {{name: config, mountPath: /etc/config}}
    - {{name: secret, mountPath: /etc/secret}}
    - {{name: podinfo, mountPath: /etc/podinfo}}
    - {{name: host, mountPath: /host}}
  - name: side
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do cat /shared/init.txt > /shared/side.tmp && mv /shared/side.tmp /shared/side.txt; sleep 1; done"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: echoer
    image: {image}
    imagePullPolicy: Never
    stdin: true
    command: ["sh", "-c", "trap 'exit 0' TERM; exec 3<&0; (while read line <&3; do echo got:$line; done) & wait"]
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  - {{name: config, configMap: {{name: app-config}}}}
  - {{name: secret, secret: {{secretName: app-secret}}}}
  - name: podinfo
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}
  - {{name: host, hostPath: {{path: "{host}", type: DirectoryOrCreate}}}}
"#,
        name = class.full_pod(),
        class = class.name(),
        runtime_class = class.spec_line(),
        web = WEB,
        host = host_dir.display(),
    )
}

/// The crasher pod of `class`: prints its run and exits 3; restarted by the kubelet.
pub fn crasher_pod(class: Class) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
{runtime_class}  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "echo run-$(cat /proc/sys/kernel/random/uuid); sleep 2; exit 3"]
"#,
        name = class.crasher_pod(),
        runtime_class = class.spec_line(),
        image = crate::containerd::TEST_IMAGE,
    )
}

/// A pod of `class` whose one container sleeps until SIGTERM (the bench's and the demo's).
pub fn sleeper_pod(name: &str, class: Class, limits: &str) -> String {
    let runtime_class = match class {
        Class::Isola => Some("isola"),
        Class::Runc => None,
    };
    sleeper_pod_of(name, runtime_class, limits)
}

/// [`sleeper_pod`] with any RuntimeClass (`None`: the node's default runtime).
pub fn sleeper_pod_of(name: &str, runtime_class: Option<&str>, limits: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
{runtime_class}  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do date; sleep 5; done"]
    resources: {{limits: {{{limits}}}}}
"#,
        runtime_class = runtime_class
            .map(|c| format!("  runtimeClassName: {c}\n"))
            .unwrap_or_default(),
        image = crate::containerd::TEST_IMAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_yaml_with_the_class_only_where_asked() {
        for class in CLASSES {
            let full = full_pod(class, Path::new("/tmp/x"));
            let doc: serde_json::Value = serde_yaml::from_str(&full).expect("YAML");
            assert_eq!(doc["metadata"]["name"], class.full_pod());
            let rc = &doc["spec"]["runtimeClassName"];
            match class {
                Class::Isola => assert_eq!(rc, "isola"),
                Class::Runc => assert!(rc.is_null()),
            }
            assert_eq!(doc["spec"]["containers"].as_array().unwrap().len(), 3);
            assert_eq!(doc["spec"]["volumes"][4]["hostPath"]["path"], "/tmp/x");
            let crasher: serde_json::Value =
                serde_yaml::from_str(&crasher_pod(class)).expect("YAML");
            assert_eq!(crasher["metadata"]["name"], class.crasher_pod());
        }
    }
}
