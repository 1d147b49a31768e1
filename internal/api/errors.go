package api

import (
	"context"
	"errors"
	"net/http"
	"os"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/daemon"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// errorFor maps an error from the manager (or the agent behind it) to the
// API's status and code. pathField names the request's path field for
// file errors.
func errorFor(err error, pathField string) *Error {
	var (
		e  *Error
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
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidField, Field: "allow", Message: msg}
	case errors.Is(err, sandbox.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: msg}
	case errors.Is(err, sandbox.ErrExists):
		return &Error{Status: http.StatusConflict, Code: CodeAlreadyExists, Field: "id", Message: msg}
	case errors.Is(err, sandbox.ErrUnsupported):
		return &Error{Status: http.StatusNotImplemented, Code: CodeUnsupported, Message: msg}
	case errors.As(err, &se):
		return &Error{Status: http.StatusUnprocessableEntity, Code: CodeStartFailed, Step: se.Step, Message: msg}
	case errors.Is(err, daemon.ErrLimit):
		return &Error{Status: http.StatusTooManyRequests, Code: CodeLimitReached, Message: msg}
	case errors.Is(err, daemon.ErrNotRunning):
		return &Error{Status: http.StatusConflict, Code: CodeNotRunning, Message: msg}
	case errors.Is(err, daemon.ErrCommandNotFound):
		return &Error{Status: http.StatusBadRequest, Code: CodeCommandNotFound, Field: "argv", Message: msg}
	case errors.Is(err, daemon.ErrNotExecutable):
		return &Error{Status: http.StatusBadRequest, Code: CodeNotExecutable, Field: "argv", Message: msg}
	case errors.Is(err, daemon.ErrClosed):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeShuttingDown, Message: msg}
	case errors.Is(err, agentapi.ErrEscape):
		return &Error{Status: http.StatusBadRequest, Code: CodePathEscape, Field: pathField, Message: msg}
	case errors.Is(err, agentapi.ErrTooLarge):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeFileTooLarge, Message: msg}
	case errors.Is(err, os.ErrNotExist):
		return &Error{Status: http.StatusNotFound, Code: CodeFileNotFound, Field: pathField, Message: msg}
	case errors.Is(err, os.ErrExist):
		return &Error{Status: http.StatusConflict, Code: CodeFileExists, Field: pathField, Message: msg}
	case errors.As(err, &re) && re.Code == agentapi.CodeInvalid:
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidField, Field: pathField, Message: msg}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusGatewayTimeout, Code: CodeTimeout, Message: msg}
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeBodyTooLarge, Message: msg}
	}
	return &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: msg}
}
