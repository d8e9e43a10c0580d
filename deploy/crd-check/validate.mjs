// Validates custom resources against the schemas of their published CRDs,
// compiled into validators by the kubernetes-models packages. Reads a JSON
// array of objects on stdin; prints one JSON line per object:
//   {"index": i, "kind": "...", "checked": true|false, "errors": ["..."]}
// "checked": false means no model for that apiVersion and kind here.
// Run by scripts/validate-manifests.py (through scripts/check-deploy).
//
// What this does not catch: fields the CRD schema does not know. CRD schemas
// leave them open (the API server prunes them, or refuses them under
// `kubectl apply --validate=strict`), and so do these validators.
import { Certificate } from "@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate";
import { Issuer } from "@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer";
import { ClusterIssuer } from "@kubernetes-models/cert-manager/cert-manager.io/v1/ClusterIssuer";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = [Certificate, Issuer, ClusterIssuer, ServiceMonitor, PodMonitor, PrometheusRule];

let input = "";
for await (const chunk of process.stdin) input += chunk;
JSON.parse(input).forEach((obj, index) => {
  const model = models.find((m) => m.apiVersion === obj.apiVersion && m.kind === obj.kind);
  const result = { index, kind: obj.kind, checked: Boolean(model), errors: [] };
  if (model) {
    try {
      new model(obj).validate();
    } catch (e) {
      result.errors = (e.errors || [e]).map((err) =>
        err.instancePath !== undefined ? `${err.instancePath || "(top)"} ${err.message}` : String(err.message || err),
      );
    }
  }
  console.log(JSON.stringify(result));
});
