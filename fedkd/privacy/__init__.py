"""Privacy: DP-SGD on clients (dpsgd), noise on released outputs (output_noise), ledgers (accounting)."""
