package enroll

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/keyguard/keyguard/collector/certgen"
)

type request struct {
	Token string `json:"token,omitempty"`
	CSR   []byte `json:"csr"` // DER
}

type response struct {
	Certificate string `json:"certificate,omitempty"`
	Error       string `json:"error,omitempty"`
}

// Handler serves POST /v1/enroll, POST /v1/renew and POST /v1/approve {"name"} (operator certificate). It must run behind TLS that asks for (but does
// not require) a client certificate verified by the CA: tls.VerifyClientCertIfGiven.
func (a *Authority) Handler(log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	serve := func(w http.ResponseWriter, r *http.Request, renew bool) {
		var req request
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
			reply(w, http.StatusBadRequest, response{Error: "bad request: " + err.Error()})
			return
		}
		var cert []byte
		var err error
		if renew {
			if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
				reply(w, http.StatusUnauthorized, response{Error: "renewal needs the current client certificate"})
				return
			}
			cert, err = a.Renew(r.Context(), r.TLS.VerifiedChains[0][0], req.CSR)
		} else {
			cert, err = a.Enroll(r.Context(), req.Token, req.CSR)
		}
		code := http.StatusOK
		switch {
		case errors.Is(err, ErrToken):
			code = http.StatusForbidden
		case errors.Is(err, ErrLive):
			code = http.StatusConflict
		case errors.Is(err, ErrCSR):
			code = http.StatusBadRequest
		case err != nil:
			code = http.StatusInternalServerError
		}
		if err != nil {
			log.Warn("enrollment refused", "remote", r.RemoteAddr, "renew", renew, "err", err)
			reply(w, code, response{Error: err.Error()})
			return
		}
		log.Info("certificate issued", "remote", r.RemoteAddr, "renew", renew)
		reply(w, code, response{Certificate: string(cert)})
	}
	// An operator (client certificate with OU keyguard-operator) approves re-enrollment of a name.
	mux.HandleFunc("POST /v1/approve", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Name string }
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || !slicesHas(r.TLS.VerifiedChains[0][0].Subject.OrganizationalUnit, certgen.OUOperator) {
			reply(w, http.StatusForbidden, response{Error: "approval needs an operator certificate (OU keyguard-operator)"})
			return
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&req); err != nil || !validName(req.Name) {
			reply(w, http.StatusBadRequest, response{Error: "want {\"name\": HOST}"})
			return
		}
		if err := a.Approve(r.Context(), req.Name); err != nil {
			log.Error("approval not recorded", "name", req.Name, "err", err)
			reply(w, http.StatusInternalServerError, response{Error: err.Error()})
			return
		}
		log.Info("re-enrollment approved", "name", req.Name, "operator", r.TLS.VerifiedChains[0][0].Subject.CommonName)
		reply(w, http.StatusOK, response{})
	})
	mux.HandleFunc("POST /v1/enroll", func(w http.ResponseWriter, r *http.Request) { serve(w, r, false) })
	mux.HandleFunc("POST /v1/renew", func(w http.ResponseWriter, r *http.Request) { serve(w, r, true) })
	return mux
}

func reply(w http.ResponseWriter, code int, r response) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(r)
}
