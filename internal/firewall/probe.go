package firewall

import (
	"context"
	"fmt"

	"github.com/google/nftables"

	"github.com/ironclaw/ironclaw/internal/doctor"
)

// Probe is `ironclaw doctor`'s nftables check: it asks the kernel, over
// netlink, for the host's inet tables — read-only, nothing is changed. A
// kernel without nf_tables (or a process without CAP_NET_ADMIN) fails it,
// and then no sandbox can have network rules.
func Probe(context.Context) []doctor.Check {
	c := doctor.Check{Name: "nftables"}
	conn, err := nftables.New()
	if err == nil {
		var tables []*nftables.Table
		tables, err = conn.ListTablesOfFamily(nftables.TableFamilyINet)
		if err == nil {
			c.Status, c.Detail = doctor.OK, fmt.Sprintf("nf_tables answers over netlink (%d inet table(s))", len(tables))
			return []doctor.Check{c}
		}
	}
	c.Status, c.Detail = doctor.Missing, "nf_tables over netlink: "+err.Error()
	c.Fix = "use a kernel with CONFIG_NF_TABLES (nft_nat, nft_masq, nft_redir, nf_conntrack) and run ironclaw as root; --allow needs it"
	return []doctor.Check{c}
}
