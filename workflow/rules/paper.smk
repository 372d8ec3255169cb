# paper stage rules (to be written)
