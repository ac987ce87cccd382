#!/usr/bin/env bash
# Run a private Orthanc PACS (Debian's orthanc + orthanc-dicomweb) in the foreground, for the tests and
# for trying the PACS integration by hand. Installs the packages if missing (idempotent), writes a
# config into DIR (storage and index in DIR too), then execs Orthanc: the PID of this script becomes
# Orthanc's own PID, so `kill <pid>` stops it (SIGTERM, about a second).
#   scripts/run_orthanc.sh DIR [HTTP_PORT] [DICOM_PORT] [AET] [MODALITY_AET:HOST:PORT ...]
#   scripts/run_orthanc.sh /tmp/pacs 8042 4242 ORTHANC BRATS:127.0.0.1:11112
# DICOMweb is then at http://127.0.0.1:HTTP_PORT/dicom-web/ (HTTP on loopback only; Orthanc 1.10 binds
# its DICOM port on all interfaces: use unusual ports). With ORTHANC_USER and ORTHANC_PASSWORD set in the
# environment, HTTP needs that user (basic authentication); otherwise it needs none.
# Each MODALITY entry is a DICOM peer Orthanc may send to (C-STORE), e.g. the segmentation listener.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:?usage: run_orthanc.sh DIR [HTTP_PORT] [DICOM_PORT] [AET] [AET:HOST:PORT ...]}"
http_port="${2:-8042}"
dicom_port="${3:-4242}"
aet="${4:-ORTHANC}"
shift $(( $# < 4 ? $# : 4 ))
"$here/install_system_packages.sh" orthanc orthanc-dicomweb >&2
plugin=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
[ -f "$plugin" ] || { echo "run_orthanc: $plugin missing after installing orthanc-dicomweb" >&2; exit 1; }
mkdir -p "$dir/db"
auth='"AuthenticationEnabled": false'
if [ -n "${ORTHANC_USER:-}" ]; then
  auth="\"AuthenticationEnabled\": true, \"RegisteredUsers\": {\"${ORTHANC_USER}\": \"${ORTHANC_PASSWORD:?ORTHANC_PASSWORD is needed with ORTHANC_USER}\"}"
fi
modalities=""
for peer in "$@"; do
  IFS=: read -r peer_aet peer_host peer_port <<<"$peer"
  modalities+="${modalities:+, }\"${peer_aet,,}\": [\"$peer_aet\", \"$peer_host\", $peer_port]"
done
cat >"$dir/orthanc.json" <<EOF
{
  "Name": "brats-serve-test-pacs",
  "StorageDirectory": "$dir/db",
  "IndexDirectory": "$dir/db",
  "Plugins": ["$plugin"],
  "HttpPort": $http_port,
  "RemoteAccessAllowed": false,
  $auth,
  "DicomServerEnabled": true,
  "DicomAet": "$aet",
  "DicomPort": $dicom_port,
  "DicomAlwaysAllowStore": true,
  "DicomModalities": { $modalities },
  "HttpCompressionEnabled": false,
  "StableAge": 1,
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/", "Host": "127.0.0.1:$http_port", "Ssl": false }
}
EOF
exec Orthanc "$dir/orthanc.json"
