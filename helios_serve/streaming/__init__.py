"""Live delivery of chunks: fragmented MP4 segments, HLS playlists."""
