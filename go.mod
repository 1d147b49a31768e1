module github.com/ironclaw/ironclaw

go 1.26.8
