package apiserver

import (
	"context"
	"errors"
	"net/http"
	"os"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/daemon"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// errorFor maps an error from the manager (or the agent behind it) to the
// API's status and code. pathField names the request's path field for
// file errors.
func errorFor(err error, pathField string) *api.Error {
	var (
		e  *api.Error
		se *sandbox.StartError
		re *agentapi.RemoteError
	)
	msg := err.Error()
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, sandbox.ErrInvalid):
		return invalid(err)
	case errors.Is(err, firewall.ErrInvalidRule):
		return &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalidField, Field: "allow", Message: msg}
	case errors.Is(err, sandbox.ErrNotFound):
		return &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: msg}
	case errors.Is(err, sandbox.ErrExists):
		return &api.Error{Status: http.StatusConflict, Code: api.CodeAlreadyExists, Field: "id", Message: msg}
	case errors.Is(err, sandbox.ErrUnsupported):
		return &api.Error{Status: http.StatusNotImplemented, Code: api.CodeUnsupported, Message: msg}
	case errors.As(err, &se):
		return &api.Error{Status: http.StatusUnprocessableEntity, Code: api.CodeStartFailed, Step: se.Step, Message: msg}
	case errors.Is(err, daemon.ErrLimit):
		return &api.Error{Status: http.StatusTooManyRequests, Code: api.CodeLimitReached, Message: msg}
	case errors.Is(err, daemon.ErrNotRunning):
		return &api.Error{Status: http.StatusConflict, Code: api.CodeNotRunning, Message: msg}
	case errors.Is(err, daemon.ErrCommandNotFound):
		return &api.Error{Status: http.StatusBadRequest, Code: api.CodeCommandNotFound, Field: "argv", Message: msg}
	case errors.Is(err, daemon.ErrNotExecutable):
		return &api.Error{Status: http.StatusBadRequest, Code: api.CodeNotExecutable, Field: "argv", Message: msg}
	case errors.Is(err, daemon.ErrClosed):
		return &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeShuttingDown, Message: msg}
	case errors.Is(err, agentapi.ErrEscape):
		return &api.Error{Status: http.StatusBadRequest, Code: api.CodePathEscape, Field: pathField, Message: msg}
	case errors.Is(err, agentapi.ErrTooLarge):
		return &api.Error{Status: http.StatusRequestEntityTooLarge, Code: api.CodeFileTooLarge, Message: msg}
	case errors.Is(err, os.ErrNotExist):
		return &api.Error{Status: http.StatusNotFound, Code: api.CodeFileNotFound, Field: pathField, Message: msg}
	case errors.Is(err, os.ErrExist):
		return &api.Error{Status: http.StatusConflict, Code: api.CodeFileExists, Field: pathField, Message: msg}
	case errors.As(err, &re) && re.Code == agentapi.CodeInvalid:
		return &api.Error{Status: http.StatusBadRequest, Code: api.CodeInvalidField, Field: pathField, Message: msg}
	case errors.Is(err, context.DeadlineExceeded):
		return &api.Error{Status: http.StatusGatewayTimeout, Code: api.CodeTimeout, Message: msg}
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &api.Error{Status: http.StatusRequestEntityTooLarge, Code: api.CodeBodyTooLarge, Message: msg}
	}
	return &api.Error{Status: http.StatusInternalServerError, Code: api.CodeInternal, Message: msg}
}
