package seccomp

import "io"

const LauncherArg0 = "ironclaw-vmm-launch"

func LauncherMain(args []string, stderr io.Writer) int { return 1 }
