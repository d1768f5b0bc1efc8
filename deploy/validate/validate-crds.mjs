// Validates the CRD objects in a rendered manifest (KEDA, Prometheus Operator) against
// their published models; other objects are left to kubernetes-validate.
import fs from "node:fs";
import yaml from "js-yaml";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";
import * as mon from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const kinds = { "keda.sh/v1alpha1": keda, "monitoring.coreos.com/v1": mon };
let failed = 0;
let checked = 0;
for (const doc of yaml.loadAll(fs.readFileSync(process.argv[2], "utf8"))) {
  if (!doc || !kinds[doc.apiVersion]) continue;
  const Cls = kinds[doc.apiVersion][doc.kind];
  if (!Cls) {
    console.error(`no model for ${doc.apiVersion} ${doc.kind}`);
    failed++;
    continue;
  }
  checked++;
  try {
    new Cls(doc).validate();
    // KEDA trigger metadata is a free-form map: check the keys Kiln relies on.
    for (const t of doc.spec?.triggers ?? []) {
      for (const k of ["address", "listName", "listLength"]) {
        if (typeof t.metadata?.[k] !== "string") throw new Error(`trigger metadata.${k} must be a string`);
      }
    }
  } catch (e) {
    failed++;
    console.error(`FAIL ${doc.kind}/${doc.metadata?.name}: ${e.message}`);
  }
}
console.log(`crd: ${checked - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
