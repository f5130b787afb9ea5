"""Pure torch math for the RL methods: no Lightning in here."""
