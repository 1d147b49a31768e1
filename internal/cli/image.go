package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/vm/image"
)

// newImageCmd is `ironclaw image build`: kernel + initramfs + rootfs,
// cached by content hash.
func newImageCmd(g *Globals) *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Build and inspect micro-VM images"}
	var kernel, kernelDir, agent, rootfs, cache string
	var size int64
	build := &cobra.Command{
		Use:   "build [--rootfs DIR|TARBALL]",
		Short: "Build a micro-VM image (skipped when nothing changed)",
		Long: `Build a micro-VM image: the guest kernel, an initramfs with ironclaw-agent,
and an ext4 rootfs. Without --rootfs it builds the default image, the one
` + "`ironclaw run --backend vm`" + ` boots unless given --image: a busybox-static
rootfs with Debian's cloud kernel. With --rootfs it builds an image of that
directory or tarball; pass its directory to run with --image.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			if rootfs == "" && kernel == "" {
				if _, err := image.FindKernel(kernelDir); err != nil {
					fmt.Fprintf(out, "no kernel in %s; fetching Debian's %s\n", kernelDir, image.DebianKernelPackage)
					if _, err := image.FetchDebianKernel(ctx, kernelDir, out); err != nil {
						return err
					}
				}
				d, err := DefaultImage()
				if err != nil {
					return err
				}
				if agent != "" {
					d.Agent = agent
				}
				d.KernelDir, d.CacheDir = kernelDir, cache
				res, err := d.Resolve(ctx, true, out)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "default image %s\n  kernel    %s\n  initramfs %s\n  rootfs    %s\n", res.Dir, res.Kernel, res.Initramfs, res.Rootfs)
				return nil
			}
			var k *image.Kernel
			var err error
			switch {
			case kernel != "":
				k = &image.Kernel{Vmlinuz: kernel}
			default:
				if k, err = image.FindKernel(kernelDir); err != nil {
					fmt.Fprintf(out, "no kernel in %s; fetching Debian's %s\n", kernelDir, image.DebianKernelPackage)
					if k, err = image.FetchDebianKernel(ctx, kernelDir, out); err != nil {
						return err
					}
				}
			}
			if agent == "" {
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("--agent: %w", err)
				}
				agent = filepath.Join(filepath.Dir(self), "ironclaw-agent")
			}
			if _, err := os.Stat(agent); err != nil {
				return fmt.Errorf("--agent: %w (build it with CGO_ENABLED=0 go build ./cmd/ironclaw-agent)", err)
			}
			if rootfs == "" {
				return fmt.Errorf("--rootfs: required with --kernel (a directory or a tarball)")
			}
			res, built, err := image.Build(ctx, image.Spec{Agent: agent, Kernel: *k, Rootfs: rootfs, RootfsSizeMiB: size, CacheDir: cache}, out)
			if err != nil {
				return err
			}
			state := "cached"
			if built {
				state = "built"
			}
			fmt.Fprintf(out, "%s %s\n  kernel    %s\n  initramfs %s\n  rootfs    %s\n", state, res.Dir, res.Kernel, res.Initramfs, res.Rootfs)
			return nil
		},
	}
	f := build.Flags()
	f.StringVar(&kernel, "kernel", "", "guest kernel (vmlinuz with the needed drivers built in); default: Debian's cloud kernel")
	f.StringVar(&kernelDir, "kernel-dir", EnvOr(image.KernelDirEnv, image.DefaultKernelDir), "where Debian's kernel is (or gets) unpacked")
	f.StringVar(&agent, "agent", "", "static ironclaw-agent binary (default: next to this binary)")
	f.StringVar(&rootfs, "rootfs", "", "rootfs directory or tarball (e.g. an exported OCI image); default: the default busybox image")
	f.Int64Var(&size, "size-mib", 0, "rootfs size (default: from the content)")
	f.StringVar(&cache, "cache", EnvOr("IRONCLAW_CACHE", image.DefaultCacheDir), "image cache directory (env IRONCLAW_CACHE)")
	img.AddCommand(build)
	_ = g
	return img
}
