// Verifies recorded webhook requests with the standardwebhooks package:
// node verify.js <requests.json>. Each request is {secret, id, timestamp,
// signature, body (base64), tampered}; a tampered one must fail to verify. Prints
// "verified N" on success, exits 1 naming the first request that does not
// behave.
const fs = require("fs");
const { Webhook } = require("standardwebhooks");

const requests = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
let n = 0;
for (const r of requests) {
  const wh = new Webhook(r.secret); // "whsec_" and the base64 of the key
  const headers = { "webhook-id": r.id, "webhook-timestamp": r.timestamp, "webhook-signature": r.signature };
  let ok = true;
  try {
    wh.verify(Buffer.from(r.body, "base64"), headers);
  } catch (e) {
    ok = false;
    if (!r.tampered) {
      console.error(`request ${r.id}: ${e.message}`);
      process.exit(1);
    }
  }
  if (ok && r.tampered) {
    console.error(`tampered request ${r.id} verified`);
    process.exit(1);
  }
  n++;
}
console.log(`verified ${n}`);
