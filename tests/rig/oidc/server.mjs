// OAuth 2.0 / OIDC provider for mlgw integration tests (oidc-provider 9.x).
//
// Started by tests/rig/oidc.sh; see tests/rig/README.md ("## oidc-provider").
//
// Environment:
//   OIDC_PORT        port on 127.0.0.1 (0 or unset: a free port is picked)
//   OIDC_JWKS_FILE   load the signing keys (private JWKS, {"keys":[...]}) from this
//                    file instead of generating fresh ones
//   RIG_DIR          when set and keys were generated, they are written to
//                    $RIG_DIR/oidc-keys.json (so a restart can reuse them)
//   OIDC_TOKEN_TTL   access token lifetime in seconds (default 600)
//
// Browser sign-in (the gateway's console): the public client `mlgw-console`
// (authorization code with PKCE, any loopback port's /console/callback) and
// oidc-provider's own sign-in and consent pages, where any password is
// accepted for the people in USERS.
//
// Everything is in memory; nothing survives a restart except what OIDC_JWKS_FILE gives.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import * as querystring from 'node:querystring';

import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const AUDIENCE = 'mlgw-gateway';
const RESOURCE = 'urn:mlgw:gateway';
// A second resource server, only so that tests can obtain a correctly signed token
// with the wrong audience (`token.sh CLIENT "" urn:mlgw:other`).
const OTHER_RESOURCE = 'urn:mlgw:other';
const OTHER_AUDIENCE = 'not-mlgw-gateway';
const ALL_SCOPES = ['predict', 'push', 'feedback', 'admin'];
const TOKEN_TTL = Number.parseInt(process.env.OIDC_TOKEN_TTL || '600', 10);

// client_id -> { groups, scope }; secret is always `${client_id}-secret`.
const CLIENTS = {
  'mlgw-service': { groups: ['fraud-team'], scope: 'predict feedback' },
  'mlgw-pilot': { groups: ['fraud-team', 'pilot-fraud-v2'], scope: 'predict feedback' },
  'mlgw-admin': { groups: ['mlgw-admins'], scope: 'predict push feedback admin' },
  'mlgw-nogroups': { groups: [], scope: 'predict feedback' },
};

// People who sign in through a browser (the console): login -> groups.
// Their access tokens carry these groups; anyone else signs in with none.
const USERS = {
  ana: { groups: ['mlgw-admins', 'fraud-team'] },
  victor: { groups: ['fraud-team'] },
};

// The console's browser client: public (PKCE, no secret); `native` makes
// oidc-provider accept its loopback redirect on whatever port a test's
// gateway listens on (RFC 8252 7.3).
const CONSOLE_CLIENT = {
  client_id: 'mlgw-console',
  client_name: 'mlgw console',
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  grant_types: ['authorization_code'],
  response_types: ['code'],
  redirect_uris: ['http://127.0.0.1/console/callback'],
  scope: `openid ${ALL_SCOPES.join(' ')}`,
  groups: [],
};

function log(msg) {
  process.stdout.write(`${new Date().toISOString()} ${msg}\n`);
}

function die(msg, err) {
  process.stderr.write(`oidc-provider FATAL: ${msg}${err ? `: ${err.stack || err}` : ''}\n`);
  process.exit(1);
}

// ---------------------------------------------------------------- signing keys

function thumbprint(jwk) {
  // RFC 7638 JWK thumbprint (members in lexicographic order).
  const members = jwk.kty === 'RSA'
    ? { e: jwk.e, kty: jwk.kty, n: jwk.n }
    : { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  return crypto.createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

function generateKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return {
    keys: [
      // RS256 first: it is the default for access tokens and ID tokens.
      { ...rsa, kid: `rs256-${thumbprint(rsa).slice(0, 16)}`, alg: 'RS256', use: 'sig' },
      { ...ec, kid: `es256-${thumbprint(ec).slice(0, 16)}`, alg: 'ES256', use: 'sig' },
    ],
  };
}

function loadKeys() {
  const file = process.env.OIDC_JWKS_FILE;
  if (file) {
    let jwks;
    try {
      jwks = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (err) {
      die(`cannot read OIDC_JWKS_FILE=${file}`, err);
    }
    if (!Array.isArray(jwks?.keys) || jwks.keys.length === 0) {
      die(`OIDC_JWKS_FILE=${file} has no "keys" array`);
    }
    log(`keys loaded from ${file}: ${jwks.keys.map((k) => k.kid).join(', ')}`);
    return jwks;
  }
  const jwks = generateKeys();
  if (process.env.RIG_DIR) {
    const out = path.join(process.env.RIG_DIR, 'oidc-keys.json');
    fs.writeFileSync(out, `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o600 });
    log(`keys generated and written to ${out}: ${jwks.keys.map((k) => k.kid).join(', ')}`);
  } else {
    log(`keys generated: ${jwks.keys.map((k) => k.kid).join(', ')}`);
  }
  return jwks;
}

// ---------------------------------------------------------------- http server

const requestedPort = Number.parseInt(process.env.OIDC_PORT || '0', 10);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  die(`invalid OIDC_PORT=${process.env.OIDC_PORT}`);
}

// The issuer must contain the real port, so listen first and build the Provider after
// (requests are only handled once provider.callback() is attached below).
const server = http.createServer();
server.on('error', (err) => die(`cannot listen on ${HOST}:${requestedPort}`, err));
await new Promise((resolve) => { server.listen(requestedPort, HOST, resolve); });
const { port } = server.address();
const issuer = `http://${HOST}:${port}`;

const jwks = loadKeys();

// ---------------------------------------------------------------- provider

const provider = new Provider(issuer, {
  jwks,
  clients: [
    ...Object.entries(CLIENTS).map(([clientId, { groups, scope }]) => ({
      client_id: clientId,
      client_secret: `${clientId}-secret`,
      client_name: clientId,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope,
      groups,
    })),
    CONSOLE_CLIENT,
  ],
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, groups: USERS[id]?.groups ?? [] }),
  }),
  extraClientMetadata: { properties: ['groups'] },
  scopes: ['openid', ...ALL_SCOPES],
  features: {
    // Its sign-in and consent pages, for the console's browser tests.
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => (oneOf ? oneOf : RESOURCE),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator === RESOURCE || resourceIndicator === OTHER_RESOURCE) {
          return {
            scope: ALL_SCOPES.join(' '),
            audience: resourceIndicator === RESOURCE ? AUDIENCE : OTHER_AUDIENCE,
            accessTokenTTL: TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        }
        throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
      },
    },
  },
  extraTokenClaims: (ctx, token) => {
    // A person's token carries their groups; a service's, its client's.
    if (token.accountId) {
      return { groups: [...(USERS[token.accountId]?.groups ?? [])] };
    }
    const groups = token.client?.groups ?? ctx?.oidc?.client?.groups;
    return { groups: Array.isArray(groups) ? [...groups] : [] };
  },
  ttl: {
    ClientCredentials: TOKEN_TTL,
    AccessToken: TOKEN_TTL,
  },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
});

// Rig extension: a client_credentials request without `scope` gets the client's
// registered scope (like Keycloak's default client scopes). oidc-provider would
// otherwise issue a token without any scope. The body is pre-parsed here; the
// library then reads `ctx.request.body` (it logs a one-time warning about it).
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/token' && ctx.is('application/x-www-form-urlencoded')) {
    const chunks = [];
    let size = 0;
    for await (const chunk of ctx.req) {
      size += chunk.length;
      if (size > 56 * 1024) ctx.throw(413, 'request entity too large');
      chunks.push(chunk);
    }
    const body = querystring.parse(Buffer.concat(chunks).toString('utf8'));
    if (body.grant_type === 'client_credentials' && body.scope === undefined) {
      let clientId = typeof body.client_id === 'string' ? body.client_id : undefined;
      const auth = ctx.get('authorization');
      if (!clientId && /^basic /i.test(auth)) {
        const decoded = Buffer.from(auth.slice(6).trim(), 'base64').toString('utf8');
        clientId = decodeURIComponent(decoded.split(':')[0].replace(/\+/g, ' '));
      }
      if (clientId && Object.hasOwn(CLIENTS, clientId)) {
        body.scope = CLIENTS[clientId].scope;
      }
    }
    ctx.request.body = body;
  }
  await next();
});

provider.on('grant.success', (ctx) => {
  const { client } = ctx.oidc;
  log(`token issued client_id=${client?.clientId} scope="${ctx.body?.scope ?? ''}"`);
});
provider.on('grant.error', (ctx, err) => {
  log(`token error client_id=${ctx.oidc?.client?.clientId ?? '-'} ${err.error ?? err.name}: ${err.error_description ?? err.message}`);
});
provider.on('server_error', (ctx, err) => {
  log(`server_error ${ctx.method} ${ctx.path}: ${err.stack || err}`);
});

server.on('request', provider.callback());

// Exact format relied upon by tests/rig/oidc.sh (no timestamp prefix).
process.stdout.write(`oidc-provider ready issuer=${issuer}\n`);

function shutdown(signal) {
  log(`received ${signal}, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
