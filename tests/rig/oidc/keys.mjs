// Key rotation for the test provider (used by `oidc.sh rotate|retire`).
//
//   node keys.mjs rotate IN.json OUT.json   # OUT = a new RS256 key first, then IN's keys
//   node keys.mjs retire IN.json OUT.json   # OUT = IN's first key only (the newest)
//
// oidc-provider signs with the first key of the algorithm, so after `rotate` new
// tokens carry the new kid while tokens signed with the old keys still verify
// until `retire` drops them from the JWKS.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

const [cmd, inFile, outFile] = process.argv.slice(2);
if (!['rotate', 'retire'].includes(cmd) || !inFile || !outFile) {
  process.stderr.write('usage: node keys.mjs rotate|retire IN.json OUT.json\n');
  process.exit(2);
}
const jwks = JSON.parse(fs.readFileSync(inFile, 'utf8'));
if (!Array.isArray(jwks?.keys) || jwks.keys.length === 0) {
  process.stderr.write(`${inFile} has no "keys" array\n`);
  process.exit(1);
}
let keys;
if (cmd === 'rotate') {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const tp = crypto.createHash('sha256')
    .update(JSON.stringify({ e: rsa.e, kty: rsa.kty, n: rsa.n }))
    .digest('base64url');
  keys = [{ ...rsa, kid: `rs256-${tp.slice(0, 16)}`, alg: 'RS256', use: 'sig' }, ...jwks.keys];
} else {
  keys = [jwks.keys[0]];
}
fs.writeFileSync(outFile, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600 });
process.stdout.write(`${keys.map((k) => k.kid).join(' ')}\n`);
