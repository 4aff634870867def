#!/usr/bin/env bash
# Re-fetches the vendored uPlot (the status page's chart library) from the
# npm registry: `make uplot` (UPLOT_VERSION=1.6.32 by default). npm checks
# the tarball against the registry's integrity; this script then checks it
# against the one recorded in web/uplot/VERSION, unless the version changed,
# and rewrites VERSION with the version, integrity and file digests that
# TestStatusPageVendoredUPlot verifies.
set -euo pipefail
version="${1:-1.6.32}"
dir="$(cd "$(dirname "$0")" && pwd)/uplot"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cd "$tmp"
npm pack --silent --json "uplot@${version}" >pack.json
integrity="$(node -e 'console.log(JSON.parse(require("fs").readFileSync("pack.json"))[0].integrity)')"
recorded="$(sed -n 's/^integrity //p' "$dir/VERSION" 2>/dev/null || true)"
if grep -qx "version ${version}" "$dir/VERSION" 2>/dev/null && [ "$recorded" != "$integrity" ]; then
  echo "fetch-uplot: uplot@${version} from the registry has integrity ${integrity}, VERSION records ${recorded}" >&2
  exit 1
fi
tar xzf "uplot-${version}.tgz"
cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css package/LICENSE "$dir/"
{
  echo "version ${version}"
  echo "integrity ${integrity}"
  echo "source https://registry.npmjs.org/uplot/-/uplot-${version}.tgz"
  (cd "$dir" && sha256sum uPlot.iife.min.js uPlot.min.css LICENSE | sed 's/^/sha256 /')
} >"$dir/VERSION"
echo "fetch-uplot: vendored uplot@${version} (${integrity}) into ${dir}"
