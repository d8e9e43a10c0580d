//! The Kubernetes manifests agree with the service.
//!
//! Each overlay of `deploy/k8s/overlays/` is rendered with `kubectl
//! kustomize`, as `kubectl apply -k` would, and read back:
//!
//! - the ConfigMap's settings file loads with the service's own loader
//!   (`orders::config`) in `production`, over the image's `config/`, with the
//!   Secret-fed `ORDERS__*` variables filled in: no unknown key (the loader
//!   refuses them) and nothing missing ([`Settings::validate`] passes once
//!   every configured file path is one the pod mounts);
//! - container ports are `server.addr` and `admin.addr`; the startup,
//!   readiness and liveness probes are native gRPC probes on the admin port
//!   with the contract's health names; the Services and the NetworkPolicy
//!   name those ports;
//! - `tls.cert` and `tls.key` are files of a mounted Secret (whole-directory
//!   mounts, so rotation reaches the pod);
//! - `terminationGracePeriodSeconds` covers the preStop pause,
//!   `shutdown.drain_secs` and the longest call (`server.max_timeout_ms`, and
//!   the server's own in-flight grace);
//! - every Secret or ConfigMap the pods need but the overlay does not
//!   create is one the deployment guide (`docs/deployment.md`) tells you
//!   to create.
//!
//! Schemas and security rules are `scripts/check-deploy` (kubernetes-validate,
//! checkov); this test is about agreement with the code.

use orders::config::{Environment, Settings, Sources};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// Values of the right form for the variables the Deployment takes from
/// Secrets (the real ones exist only in the cluster). A new Secret-fed
/// variable needs a line here, so the test cannot pass without loading it.
fn secret_sample(var: &str) -> &'static str {
    match var {
        "ORDERS__DATABASE__URL" => "postgres://orders:sample-password@orders-postgres:5432/orders",
        other => panic!("{other} comes from a Secret: add a sample value to secret_sample()"),
    }
}

/// `kubectl kustomize <overlay>`, every object as JSON; `None` (skipped,
/// saying so) without kubectl outside CI.
fn render(overlay: &str) -> Option<Vec<Value>> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let dir = repo().join("deploy/k8s/overlays").join(overlay);
    let out = match Command::new(&kubectl).arg("kustomize").arg(&dir).output() {
        Ok(out) => out,
        Err(e) if !ci() => {
            eprintln!("SKIPPED: cannot run {kubectl} ({e}); CI requires it");
            return None;
        }
        Err(e) => panic!("cannot run {kubectl} kustomize (install kubectl, or set KUBECTL): {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(Value::deserialize)
        .collect::<Result<_, _>>()
        .expect("kustomize output is YAML");
    Some(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// One rendered overlay, with the lookups the checks need.
struct Rendered {
    overlay: &'static str,
    docs: Vec<Value>,
}

impl Rendered {
    fn all(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.docs.iter().filter(move |d| d["kind"] == kind)
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.all(kind).find(|d| d["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.overlay))
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Where a file the configuration names comes from in the pod.
#[derive(Debug)]
struct MountedFile {
    volume: String,
    /// `("Secret" | "ConfigMap", name, key)`.
    source: (&'static str, String, String),
    sub_path: bool,
}

/// The volume file at `path` in `container`, if a volume mount provides it.
fn mounted_file(pod: &Value, container: &Value, path: &Path) -> Option<MountedFile> {
    for mount in items(&container["volumeMounts"]) {
        let mount_path = Path::new(s(&mount["mountPath"]));
        let sub_path = mount["subPath"].as_str();
        // A directory mount holds <mountPath>/<item path>; a subPath mount
        // is the file itself.
        let item_path = match sub_path {
            Some(sub) if mount_path == path => sub.to_owned(),
            None => match path.strip_prefix(mount_path) {
                Ok(rest) if rest.components().count() == 1 => rest.to_str()?.to_owned(),
                _ => continue,
            },
            Some(_) => continue,
        };
        let volume = items(&pod["volumes"])
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("volumeMount {} names no volume", mount["name"]));
        let (kind, name) = if volume["secret"].is_object() {
            ("Secret", s(&volume["secret"]["secretName"]))
        } else if volume["configMap"].is_object() {
            ("ConfigMap", s(&volume["configMap"]["name"]))
        } else {
            panic!(
                "{} is mounted from neither a Secret nor a ConfigMap",
                path.display()
            );
        };
        let source = &volume[if kind == "Secret" {
            "secret"
        } else {
            "configMap"
        }];
        // With `items`, only the listed keys appear, at their paths.
        let key = match source["items"].as_array() {
            Some(listed) => {
                s(&listed.iter().find(|i| i["path"] == item_path.as_str())?["key"]).to_owned()
            }
            None => item_path,
        };
        return Some(MountedFile {
            volume: s(&volume["name"]).to_owned(),
            source: (kind, name.to_owned(), key),
            sub_path: sub_path.is_some(),
        });
    }
    None
}

/// The `ORDERS__*` and `ORDERS_ENV` values the container gets, Secret-fed
/// ones replaced by samples; also the names of the Secrets they come from.
fn environment(container: &Value) -> (BTreeMap<String, String>, Vec<String>) {
    let mut vars = BTreeMap::new();
    let mut secrets = Vec::new();
    for var in items(&container["env"]) {
        let name = s(&var["name"]).to_owned();
        let value = if let Some(v) = var["value"].as_str() {
            v.to_owned()
        } else if var["valueFrom"]["secretKeyRef"].is_object() {
            secrets.push(s(&var["valueFrom"]["secretKeyRef"]["name"]).to_owned());
            secret_sample(&name).to_owned()
        } else {
            panic!("env {name}: neither a value nor a secretKeyRef");
        };
        vars.insert(name, value);
    }
    (vars, secrets)
}

fn port_of(container: &Value, name: &str) -> u16 {
    items(&container["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container has no port named {name}")) as u16
}

/// The deployment guide, where every hand-made Secret and ConfigMap must be
/// explained.
fn deployment_guide() -> String {
    let path = repo().join("docs/deployment.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every check common to the overlays; returns the settings the pods get
/// and the rendered overlay, for the overlay's own checks.
fn check(overlay: &'static str) -> Option<(Settings, Rendered)> {
    let rendered = Rendered {
        overlay,
        docs: render(overlay)?,
    };
    let deployment = rendered.get("Deployment", "orders");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = items(&pod["containers"])
        .iter()
        .find(|c| c["name"] == "orders")
        .expect("a container named orders");
    let scratch = tempfile::tempdir().unwrap();

    // --- configuration: the ConfigMap file, the variables, the image's config/
    let (vars, secret_vars) = environment(container);
    assert_eq!(
        vars.get("ORDERS_ENV").map(String::as_str),
        Some("production"),
        "{overlay}: ORDERS_ENV"
    );
    // The image sets ORDERS_CONFIG_DIR=/app/config and copies config/ there.
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    for line in [
        "ORDERS_CONFIG_DIR=/app/config",
        "WORKDIR /app",
        "COPY config ./config",
    ] {
        assert!(dockerfile.contains(line), "deploy/Dockerfile: {line}");
    }
    assert!(
        !vars.contains_key("ORDERS_CONFIG_DIR"),
        "{overlay}: the image's config/ is the one checked here"
    );
    let args: Vec<&str> = items(&container["args"]).iter().map(s).collect();
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| Path::new(w[1]))
        .unwrap_or_else(|| panic!("{overlay}: args {args:?} pass no --config"));
    let config_mount = mounted_file(pod, container, config_path)
        .unwrap_or_else(|| panic!("{overlay}: --config {config_path:?} is not mounted"));
    let (kind, name, key) = &config_mount.source;
    assert_eq!(
        *kind, "ConfigMap",
        "{overlay}: --config comes from a ConfigMap"
    );
    let config_text = s(&rendered.get("ConfigMap", name)["data"][key.as_str()]);
    let config_file = scratch.path().join("orders.toml");
    std::fs::write(&config_file, config_text).unwrap();

    let orders_vars = vars
        .iter()
        .filter(|(k, _)| k.starts_with("ORDERS__"))
        .map(|(k, v)| (k.clone(), v.clone()));
    let mut settings = Settings::read_with_vars(
        orders::config::ENV_PREFIX,
        &Sources {
            environment: Some(vars["ORDERS_ENV"].clone()),
            config_dir: Some(repo().join("config")),
            file: Some(config_file),
            use_env_vars: false,
        },
        orders_vars,
    )
    .unwrap_or_else(|e| panic!("{overlay}: the ConfigMap's settings do not load: {e}"));
    assert_eq!(settings.environment, Environment::Production);
    assert!(
        settings.service.database.url().starts_with("postgres"),
        "{overlay}: several replicas need PostgreSQL, not {}",
        orders::config::mask_password(settings.service.database.url())
    );

    // --- every file the configuration names is mounted; point the settings
    // at local stand-ins so validation can look for them.
    let root = scratch.path().join("pod");
    let mut provided: Vec<(&'static str, String)> = Vec::new();
    let mut mount = |key: &str, path: &mut PathBuf| {
        let file = mounted_file(pod, container, path)
            .unwrap_or_else(|| panic!("{overlay}: {key} = {} is not mounted", path.display()));
        let local = root.join(path.strip_prefix("/").expect("absolute paths in the pod"));
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        let (kind, name, key_in_source) = &file.source;
        // A rendered source must hold the key; a hand-made one is checked
        // against the deployment guide below.
        let content = match rendered.find(kind, name) {
            Some(obj) => {
                let data = obj["data"][key_in_source.as_str()]
                    .as_str()
                    .or_else(|| obj["stringData"][key_in_source.as_str()].as_str());
                data.unwrap_or_else(|| {
                    panic!("{overlay}: {kind} {name} has no key {key_in_source}")
                })
                .to_owned()
            }
            None => format!("stand-in for {kind} {name} key {key_in_source}\n"),
        };
        std::fs::write(&local, content).unwrap();
        provided.push((file.source.0, file.source.1.clone()));
        *path = local;
        file
    };
    let mut tls_mounts = Vec::new();
    // The platform's sections, borrowed once (the settings reach them
    // through `Deref`).
    let platform = &mut settings.platform;
    for (key, path) in [
        ("tls.cert", &mut platform.tls.cert),
        ("tls.key", &mut platform.tls.key),
        ("tls.client_ca", &mut platform.tls.client_ca),
        ("auth.jwks_file", &mut platform.auth.jwks_file),
        ("auth.jwks_ca", &mut platform.auth.jwks_ca),
    ] {
        if let Some(path) = path {
            let file = mount(key, path);
            if key.starts_with("tls.") {
                tls_mounts.push((key, file));
            }
        }
    }
    for (i, path) in settings.auth.public_keys.iter_mut().enumerate() {
        mount(&format!("auth.public_keys[{i}]"), path);
    }
    settings.validate().unwrap_or_else(|e| {
        panic!("{overlay}: the deployed configuration is refused in production: {e}")
    });

    // --- TLS from a Secret, as files that the kubelet can swap in place.
    let keys: Vec<&str> = tls_mounts.iter().map(|(k, _)| *k).collect();
    assert!(
        keys.contains(&"tls.cert") && keys.contains(&"tls.key"),
        "{overlay}: {keys:?}"
    );
    for (key, file) in &tls_mounts {
        assert_eq!(file.source.0, "Secret", "{overlay}: {key} from a Secret");
        assert!(
            !file.sub_path,
            "{overlay}: {key} is a subPath mount ({}): rotated certificates would never reach the pod",
            file.volume
        );
    }

    // --- ports
    let grpc = port_of(container, "grpc");
    let admin = port_of(container, "admin");
    assert_eq!(
        grpc,
        settings.server_addr().port(),
        "{overlay}: port grpc vs server.addr"
    );
    assert_eq!(
        admin,
        settings.admin_addr().port(),
        "{overlay}: port admin vs admin.addr"
    );
    let selects_orders =
        |svc: &&Value| svc["spec"]["selector"]["app.kubernetes.io/name"] == "orders";
    for svc in rendered.all("Service").filter(selects_orders) {
        for port in items(&svc["spec"]["ports"]) {
            let target = s(&port["targetPort"]);
            port_of(container, target);
            let svc_name = s(&svc["metadata"]["name"]);
            if svc_name == "orders" || svc_name == "orders-headless" {
                assert_eq!(
                    target, "grpc",
                    "{overlay}: {svc_name} is for clients: gRPC only"
                );
                assert_eq!(port["name"], "grpc", "{overlay}: {svc_name} port name");
                assert!(
                    port["appProtocol"].is_string(),
                    "{overlay}: {svc_name} appProtocol"
                );
            }
        }
    }
    assert_eq!(
        rendered.get("Service", "orders-headless")["spec"]["clusterIP"],
        "None",
        "{overlay}: the SDK's DNS balancing needs a headless Service"
    );

    // --- probes: native gRPC on the admin port, the contract's names.
    for (probe, names) in [
        ("startupProbe", vec![grpc_platform::health::LIVENESS]),
        ("readinessProbe", vec!["readiness"]),
        ("livenessProbe", vec![grpc_platform::health::LIVENESS]),
    ] {
        let grpc_probe = &container[probe]["grpc"];
        assert!(grpc_probe.is_object(), "{overlay}: {probe} is a gRPC probe");
        assert_eq!(
            grpc_probe["port"].as_u64(),
            Some(u64::from(admin)),
            "{overlay}: {probe} port"
        );
        let service = s(&grpc_probe["service"]);
        assert!(
            names.contains(&service),
            "{overlay}: {probe} asks for {service:?}"
        );
    }
    assert!(grpc_platform::health::READINESS.contains(&"readiness"));

    // --- shutdown: the grace period covers the pause, the drain and the
    // longest call (or the server's own in-flight grace, if longer).
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop pause");
    let longest_call = settings
        .server
        .max_timeout
        .as_millis()
        .div_ceil(1000)
        .max(u128::from(orders::startup::SHUTDOWN_GRACE.as_secs()));
    let drain = settings.shutdown.drain.as_secs();
    let needed = u128::from(pause + drain) + longest_call;
    assert!(
        u128::from(grace) > needed,
        "{overlay}: terminationGracePeriodSeconds {grace} must exceed preStop {pause} + \
         shutdown.drain_secs {drain} + the longest call {longest_call}"
    );
    let rolling = &deployment["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(
        rolling["maxUnavailable"], 0,
        "{overlay}: never below the wanted replicas"
    );

    // --- the NetworkPolicy admits and allows what the configuration uses.
    let policy = rendered.get("NetworkPolicy", "orders");
    let ingress_ports: Vec<&Value> = items(&policy["spec"]["ingress"])
        .iter()
        .flat_map(|r| items(&r["ports"]))
        .map(|p| &p["port"])
        .collect();
    for name in ["grpc", "admin"] {
        assert!(
            ingress_ports.iter().any(|p| **p == name),
            "{overlay}: ingress to {name}"
        );
    }
    let egress_ports: Vec<u64> = items(&policy["spec"]["egress"])
        .iter()
        .flat_map(|r| items(&r["ports"]))
        .filter_map(|p| p["port"].as_u64())
        .collect();
    let mut outbound = vec![("DNS", 53), ("database.url", 5432)];
    if let Some(otlp) = &settings.telemetry.otlp_endpoint {
        let port = url::Url::parse(otlp)
            .unwrap()
            .port_or_known_default()
            .unwrap();
        outbound.push(("telemetry.otlp_endpoint", port));
    }
    if let Some(jwks) = &settings.auth.jwks_url {
        let port = url::Url::parse(jwks)
            .unwrap()
            .port_or_known_default()
            .unwrap();
        outbound.push(("auth.jwks_url", port));
    }
    for (what, port) in outbound {
        assert!(
            egress_ports.contains(&u64::from(port)),
            "{overlay}: egress to {what} (port {port})"
        );
    }

    // --- hand-made Secrets and ConfigMaps are the deployment guide's to
    // explain: those of every workload (the dev overlay's PostgreSQL too).
    let mut needed_objects: Vec<(&str, String)> =
        secret_vars.into_iter().map(|n| ("Secret", n)).collect();
    needed_objects.extend(provided);
    let workloads = rendered
        .all("Deployment")
        .chain(rendered.all("StatefulSet"));
    for workload_pod in workloads.map(|w| &w["spec"]["template"]["spec"]) {
        for volume in items(&workload_pod["volumes"]) {
            if let Some(name) = volume["secret"]["secretName"].as_str() {
                needed_objects.push(("Secret", name.to_owned()));
            }
            if let Some(name) = volume["configMap"]["name"].as_str() {
                needed_objects.push(("ConfigMap", name.to_owned()));
            }
        }
        for c in items(&workload_pod["containers"]) {
            for var in items(&c["env"]) {
                if let Some(name) = var["valueFrom"]["secretKeyRef"]["name"].as_str() {
                    needed_objects.push(("Secret", name.to_owned()));
                }
            }
        }
    }
    let issued: Vec<&str> = rendered
        .all("Certificate")
        .map(|c| s(&c["spec"]["secretName"]))
        .collect();
    let guide = deployment_guide();
    let namespace = s(&deployment["metadata"]["namespace"]);
    for (kind, name) in needed_objects {
        if rendered.find(kind, &name).is_some()
            || (kind == "Secret" && issued.contains(&name.as_str()))
        {
            continue;
        }
        let verb = if kind == "Secret" {
            "create secret"
        } else {
            "create configmap"
        };
        let in_namespace = format!("-n {namespace} ");
        assert!(
            guide
                .lines()
                .any(|l| l.contains(&in_namespace) && l.contains(verb) && l.contains(&name)),
            "{overlay}: the pods need the {kind} {name}, which the overlay does not create: \
             docs/deployment.md must show `kubectl {in_namespace}{verb} ... {name}`"
        );
    }
    Some((settings, rendered))
}

#[test]
fn the_prod_overlay_agrees_with_the_service() {
    let Some((settings, rendered)) = check("prod") else {
        return;
    };
    let hpa = rendered.get("HorizontalPodAutoscaler", "orders");
    assert!(
        hpa["spec"]["minReplicas"].as_u64() >= Some(3),
        "prod: three replicas at least"
    );
    // The certificate cert-manager issues is the Secret the pods mount.
    let certificate = rendered.get("Certificate", "orders-tls");
    let pod = &rendered.get("Deployment", "orders")["spec"]["template"]["spec"];
    assert!(
        items(&pod["volumes"])
            .iter()
            .any(|v| v["secret"]["secretName"] == certificate["spec"]["secretName"]),
        "prod: the Certificate's Secret is mounted"
    );
    // The ServiceMonitor scrapes the admin port's /metrics.
    let monitor = rendered
        .all("ServiceMonitor")
        .next()
        .expect("prod: a ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let scraped = rendered
        .all("Service")
        .filter(|svc| {
            monitor["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| svc["metadata"]["labels"][k] == *v)
        })
        .flat_map(|svc| items(&svc["spec"]["ports"]).iter())
        .find(|p| p["name"] == endpoint["port"])
        .expect("prod: the ServiceMonitor's port is on a Service it selects");
    assert_eq!(scraped["targetPort"], "admin");
    assert_eq!(
        scraped["port"].as_u64(),
        Some(u64::from(settings.admin_addr().port()))
    );
    // Pinned by digest.
    let image = s(&pod["containers"][0]["image"]);
    assert!(
        image.contains("@sha256:"),
        "prod: image {image} pinned by digest"
    );
}

#[test]
fn the_dev_overlay_agrees_with_the_service() {
    let Some((settings, rendered)) = check("dev") else {
        return;
    };
    let deployment = rendered.get("Deployment", "orders");
    assert_eq!(deployment["spec"]["replicas"], 1, "dev: one replica");
    assert!(
        rendered.all("HorizontalPodAutoscaler").next().is_none(),
        "dev: no autoscaler"
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        settings.admin_addr().port().to_string(),
        "dev: scrape annotations name the admin port"
    );
    // The database the URL sample points at is the overlay's StatefulSet.
    let postgres = rendered.get("StatefulSet", "orders-postgres");
    assert!(
        postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].is_string(),
        "dev: PostgreSQL keeps its data on a volume"
    );
    assert!(rendered.find("Service", "orders-postgres").is_some());
}
