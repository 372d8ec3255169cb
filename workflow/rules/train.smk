# train stage rules (to be written)
