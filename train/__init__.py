"""Train and evaluate small from-scratch CNNs on segshards sets: `segshards train`, `segshards eval`."""
