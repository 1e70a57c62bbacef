#!/usr/bin/env bash
# Watch a video while it is generated, through its HLS live playlist.
#
#   helios-serve serve &
#   examples/stream_hls.sh "a red fox in the snow"                 # plays it with ffplay
#   examples/stream_hls.sh "a red fox in the snow" fox.mp4         # records it with ffmpeg instead
#
# The playlist (one fMP4 segment per 33-frame chunk) grows as chunks are made and ends when
# the video is complete, so any HLS player starts at the first chunk and keeps going.
# Environment: HELIOS_URL (default http://127.0.0.1:8000), HELIOS_API_KEY, NUM_FRAMES (330),
# SIZE (320x192).
set -euo pipefail

prompt=${1:?usage: stream_hls.sh PROMPT [OUTPUT.mp4]}
output=${2:-}
url=${HELIOS_URL:-http://127.0.0.1:8000}
auth=()
query=""
if [ -n "${HELIOS_API_KEY:-}" ]; then
    auth=(-H "Authorization: Bearer $HELIOS_API_KEY")
    query="?api_key=$HELIOS_API_KEY"   # players cannot send headers; the server takes the key here too
fi

body=$(python3 -c 'import json, sys; print(json.dumps({"prompt": sys.argv[1], "num_frames": int(sys.argv[2]), "size": sys.argv[3]}))' \
       "$prompt" "${NUM_FRAMES:-330}" "${SIZE:-320x192}")
id=$(curl -sf "${auth[@]}" -H 'content-type: application/json' -d "$body" "$url/v1/videos" \
     | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
echo "video $id" >&2

# Players need the first segment to start: wait until the playlist lists one.
until curl -sf "${auth[@]}" "$url/v1/videos/$id/stream.m3u8" | grep -q '^stream/seg_'; do
    status=$(curl -sf "${auth[@]}" "$url/v1/videos/$id" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
    if [ "$status" = failed ]; then echo "video $id failed" >&2; exit 1; fi
    sleep 0.2
done
playlist="$url/v1/videos/$id/stream.m3u8$query"
if [ -n "$output" ]; then
    # -live_start_index 0: from the first segment; ffmpeg follows the playlist until its end.
    ffmpeg -hide_banner -loglevel error -live_start_index 0 -i "$playlist" -c copy -y "$output"
    echo "$output" >&2
else
    ffplay -hide_banner -loglevel error -live_start_index 0 -autoexit "$playlist"
fi
