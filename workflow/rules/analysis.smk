# analysis stage rules (to be written)
