"""The music collection: audio files analysed into track features, similar tracks and playlists."""
