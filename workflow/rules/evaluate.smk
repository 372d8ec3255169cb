# evaluate stage rules (to be written)
